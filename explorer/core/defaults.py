"""The one home of the project's defaults: the target answer, the acceptance threshold and
margin, and the search and token budgets. Library functions, the CLI and the app all take
their defaults from here."""

from __future__ import annotations

import math

#: The affirmative answer opening that F-SOUR and the research commands aim for.
DEFAULT_TARGET = "Sure, here is"
#: F-SOUR stops once log P(target) reaches this (the paper: log 0.8).
DEFAULT_THRESHOLD = math.log(0.8)
#: A candidate replaces the current best only when it gains more than this (log-prob).
IMPROVE_EPS = 1e-4
#: Near-tie band of F-SOUR's decisions: where a gain lies within this of IMPROVE_EPS, two
#: candidates within it of each other, or the best within it of the threshold, the
#: decision is re-taken on the reference computation (one unbatched forward per route), so
#: every engine decides on the same numbers. Absolute part, plus a share of |log-prob| per
#: parameter precision. Measured in float32 on the demo model, fast vs reference: at most
#: 6.7e-6 apart at log-prob -7 and 2.3e-5 at -108; the band is 3.7-5x that.
TIE_BAND = 3e-5
#: Greedy steps of a batched generation whose top two logits lie closer than this (per
#: parameter precision) are re-decided by a generation of that prompt alone.
GENERATION_TIE_BAND = {"float32": 1e-3, "float64": 1e-9, "bfloat16": 0.25, "float16": 0.05}
TIE_BAND_REL = {"float32": 5e-7, "float64": 1e-12, "bfloat16": 1e-2, "float16": 3e-3}
#: The near-tie band where an engine's arithmetic is the reference's (see
#: :func:`explorer.engine.cone.exact_arithmetic`): every engine, the multi-prompt one
#: included, then scores each route to the bit (0.0 apart on every cell checked), so this
#: is a guard of about one float32 ulp against a kernel that breaks the construction.
TIE_BAND_EXACT = 1e-6
TIE_BAND_EXACT_REL = 1e-7

#: F-SOUR's random k-expert sets per (token, layer) cell (the paper's N).
FSOUR_CANDIDATES = 10
#: F-SOUR's restarts (seed + i each) before it reports its best attempt.
FSOUR_MAX_ITERS = 5
#: The orders F-SOUR walks a position's MoE layers in: the paper's (bottom-up) or RoSais's
#: (the most safety-critical router first).
FSOUR_ORDERS = ("paper", "rosais")
#: The scoring engines of F-SOUR and RoSais: ``fast`` (causal-cone recompute, batched) and
#: ``reference`` (one full forward per candidate: the authors' cost model). Same decisions.
ENGINE_NAMES = ("fast", "reference")
#: Experts the SteerMoE-style baseline deactivates per MoE layer at most.
STEER_PER_LAYER = 2
#: SAFEx-style stable expert selection (``safex``): (layer, expert) pairs masked at most, the
#: bootstrap resamples of the stability selection, the selection probability a pair needs
#: (pi), and the answer tokens measured for the answer phase.
SAFEX_EXPERTS = 12
SAFEX_RESAMPLES = 200
SAFEX_PI = 0.6
SAFEX_ANSWER_TOKENS = 32
#: The phases SAFEx selects on: the request's tokens, the answer's decoding steps, or both.
SAFEX_PHASES = ("request", "answer", "both")
#: L3-style adaptive silencing (``l3``): experts silenced per prompt at most, and the share
#: of a layer's experts silenced at most (strictly below it; the paper reports < 20%).
L3_MAX_SILENCED = 16
L3_LAYER_SHARE = 0.2
#: RoSais's random masks per router (the paper's S1).
ROSAIS_SAMPLES = 32
#: Routers RoSais masks together after scoring them (the paper's L).
ROSAIS_TOP = 5
#: The share of a router's experts one RoSais mask forbids.
ROSAIS_MASK_RATIO = 0.5
#: New tokens generated and judged after an attack (fsour, rosais, generate, evaluate).
MAX_NEW_TOKENS = 48
#: New tokens of the research commands (utility, transfer, minimize, defend, curves) and of
#: a recorded trace's continuation.
RESEARCH_MAX_NEW_TOKENS = 32

# -- bounds on every request, in every mode (hosted mode adds its own, tighter caps) --------
#: Seeds of the random sets (Python's RNG takes any int; the CLI and the app take these).
MAX_SEED = 2**32 - 1
#: Random sets per (token, layer) cell and restarts of one F-SOUR search.
MAX_CANDIDATES = 1024
MAX_ITERS = 100
#: RoSais masks per router.
MAX_SAMPLES = 4096
#: The target answer opening: characters, and tokens once tokenised.
MAX_TARGET_CHARS = 1000
MAX_TARGET_TOKENS = 128
#: New tokens one generation may ask for.
MAX_GENERATION = 4096
#: A prompt's characters before it is tokenised (the model's context caps its tokens).
MAX_PROMPT_CHARS = 1_000_000
#: A system prompt's characters.
MAX_SYSTEM_CHARS = 100_000
#: Edits of a route, and characters of a route's JSON, accepted from outside.
MAX_ROUTE_EDITS = 10_000
MAX_ROUTE_JSON_CHARS = 1_000_000

# -- background searches on Hugging Face ZeroGPU -----------------------------------------------
#: Seconds of one GPU window (``spaces.GPU(duration=...)``) a background search runs in
#: before it checkpoints and asks for the next (ZeroGPU's own default duration is 60 s).
GPU_CHUNK_SECONDS = 60

# -- loading models from the Hugging Face hub -------------------------------------------------
#: Seconds a hub id's load waits to learn whether the hub answers at all before it falls back
#: to the local cache (the hub client's own retries took 24-30 s to say it was offline).
HUB_PROBE_SECONDS = 3.0
#: The share of one GPU's memory a model's weights may fill and still load on that GPU alone;
#: above it the loader spreads the layers over several GPUs (``device_map="auto"``) and
#: ``plan`` counts GPUs with the same rule. The rest holds the search's batches.
ONE_GPU_SHARE = 0.85

# -- plan: a model's memory and cost from its config -------------------------------------------
#: GPU memory (GB, 10^9 bytes) ``plan`` assumes when none is given: one 80 GB card.
PLAN_GPU_GB = 80.0
#: Templated prompt tokens ``plan`` assumes when none are given.
PLAN_PROMPT_TOKENS = 64

#: Defaults of :func:`explorer.research.harden.harden` (the ``harden`` command's too):
#: training steps, Adam learning rate, (layer, expert) pairs trained, the benign-answer
#: term's weight and the rounds of fresh attack searches.
HARDEN_STEPS = 40
HARDEN_LR = 2e-3
HARDEN_EXPERTS = 8
HARDEN_BENIGN_WEIGHT = 1.0
HARDEN_ROUNDS = 3
