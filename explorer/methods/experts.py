"""Expert pages: what an expert of an MoE layer does, and how much it has to do with safety.

(Its home is the methods layer so that attacks can use it: SAFEx-style stable expert
selection, :mod:`explorer.methods.safex`, and L3-style silencing, :mod:`explorer.methods.l3`;
:mod:`explorer.research.experts` re-exports it.)

For every (MoE layer, expert) of a model, :func:`expert_stats` measures how often the
router selects it (top-k) on harmful and on benign prompts, in ONE batched forward pass
over each prompt set (prompts only, no generation):

- **per token**: the share of the set's templated prompt tokens whose top-k includes the
  expert (pooled over the set);
- **per prompt**: the share of the set's prompts in which it is selected at least once;
- **safety relevance**: the mean over harmful prompts of each prompt's per-token
  frequency minus the same mean over benign prompts (in [-1, 1]; positive: the expert is
  chosen more on harmful requests). Its uncertainty is a seeded bootstrap over prompts
  (each set resampled with replacement, ``bootstrap`` times; the 2.5 and 97.5
  percentiles) and the standard error of a difference of two means;
- the tokens routed to it most, with a few tokens of context either side.

Every token of the templated prompt counts, the chat template's own tokens included (the
router sees them too; the positions after the user message are where a model decides to
refuse). Prompts are right-padded in the batch; rows whose router logits hold a near tie
(where batched rounding could pick another expert) are recomputed alone, so the
selections are those of one-by-one forwards by construction.

:class:`ExpertStats` is the result (``to_json`` / ``from_json``, ``info`` provenance);
:func:`cached_expert_stats` keeps it on disk keyed by model and prompt set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from explorer.core.errors import InputError
from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
from explorer.engine.batching import memory_batch_size
from explorer.core.result import ResultMixin

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

#: The name of the project's own prompt sets (:mod:`explorer.core.prompt_sets`).
BUILTIN_SET = "builtin"
#: Bootstrap resamples of the prompts for the safety-relevance interval.
EXPERT_BOOTSTRAP = 1000
#: Tokens kept per expert (the most often routed to it) and contexts kept per token.
EXPERT_TOP_TOKENS = 8
EXPERT_CONTEXTS = 2
#: Tokens of context shown either side of a routed token.
EXPERT_WINDOW = 3
#: Router-logit gaps (between the k-th and the next expert) below which a batched row is
#: recomputed alone, per parameter precision: batched and lone matmuls round differently.
ROUTER_TIE_BAND = {"float32": 1e-4, "float64": 1e-9, "bfloat16": 0.05, "float16": 0.01}
#: Bumped when the measurement changes: older cache files are not reused.
CACHE_VERSION = 1
SETS = ("harmful", "benign")


@dataclass
class ExpertStats(ResultMixin):
    """Selection statistics of every (MoE layer, expert) on a harmful and a benign set.

    Per-layer lists have one row per MoE layer, in the order of ``moe_layers`` (absolute
    decoder-layer indices); the accessors take the absolute layer. ``counts[s][row][p][e]``
    is how many templated tokens of prompt ``p`` of set ``s`` ("harmful" or "benign")
    selected expert ``e``; ``tokens[s][p]`` that prompt's token count. ``scores``,
    ``low``, ``high`` and ``stderr`` are ``[row][expert]``; ``top_tokens[row][expert]``
    is a list of ``{"token", "harmful", "benign", "contexts"}`` (counts per set; each
    context ``{"set", "prompt", "position", "left", "token", "right"}``). ``positions``:
    what was counted, ``"prompt"`` (the templated prompt) or ``"answer"`` (the decoding
    steps of each prompt's greedy answer of up to ``answer_tokens`` tokens)."""

    model: str
    prompt_set: str
    moe_layers: list[int]
    num_experts: list[int]
    top_k: list[int]
    prompts: dict[str, list[str]]
    tokens: dict[str, list[int]]
    counts: dict[str, list[list[list[int]]]]
    scores: list[list[float]]
    low: list[list[float]]
    high: list[list[float]]
    stderr: list[list[float]]
    top_tokens: list[list[list[dict]]]
    seed: int = 0
    bootstrap: int = EXPERT_BOOTSTRAP
    recomputed: int = 0
    seconds: float = 0.0
    positions: str = "prompt"
    answer_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, layer: int) -> int:
        """The row of absolute decoder layer ``layer``; InputError when it is not an MoE
        layer of the model."""
        try:
            return self.moe_layers.index(int(layer))
        except ValueError:
            raise InputError(f"layer {layer} is not an MoE layer (MoE layers: "
                             f"{self.moe_layers})") from None

    def check(self, layer: int, expert: int) -> int:
        """The row of ``layer``, after checking that ``expert`` exists there."""
        r = self.row(layer)
        if not 0 <= int(expert) < self.num_experts[r]:
            raise InputError(f"layer {layer} has experts 0..{self.num_experts[r] - 1}, "
                             f"not {expert}")
        return r

    def token_freq(self, which: str, layer: int) -> list[float]:
        """Per expert of ``layer``: the share of set ``which``'s tokens that selected it."""
        r = self.row(layer)
        total = sum(self.tokens[which]) or 1
        rows = self.counts[which][r]
        return [sum(p[e] for p in rows) / total for e in range(self.num_experts[r])]

    def prompt_freq(self, which: str, layer: int) -> list[float]:
        """Per expert of ``layer``: the share of set ``which``'s prompts that selected it
        at least once."""
        r = self.row(layer)
        rows = self.counts[which][r]
        n = len(rows) or 1
        return [sum(1 for p in rows if p[e] > 0) / n for e in range(self.num_experts[r])]

    def prompt_means(self, which: str, layer: int) -> list[float]:
        """Per expert of ``layer``: the mean over set ``which``'s prompts of each prompt's
        per-token selection frequency (the two terms of the safety relevance)."""
        r = self.row(layer)
        rows, toks = self.counts[which][r], self.tokens[which]
        return [sum(p[e] / t for p, t in zip(rows, toks)) / len(rows)
                for e in range(self.num_experts[r])]

    def prompt_stderr(self, which: str, layer: int) -> list[float]:
        """Per expert of ``layer``: the standard error of :meth:`prompt_means` (the
        spread of the per-prompt frequencies over the square root of the prompt count)."""
        r = self.row(layer)
        rows, toks = self.counts[which][r], self.tokens[which]
        if len(rows) < 2:
            return [0.0] * self.num_experts[r]
        f = torch.tensor(rows, dtype=torch.float64) / torch.tensor(
            toks, dtype=torch.float64).unsqueeze(1)
        return (f.var(0, unbiased=True) / len(rows)).sqrt().tolist()

    def per_prompt(self, which: str) -> torch.Tensor:
        """Set ``which``'s per-prompt selection frequencies of every (MoE layer, expert),
        flattened layer by layer in :meth:`cells` order: a float64 ``(prompts, cells)``
        tensor (a prompt with no counted token has zeros)."""
        toks = torch.tensor(self.tokens[which], dtype=torch.float64).clamp(min=1).unsqueeze(1)
        return torch.cat([torch.tensor(self.counts[which][r], dtype=torch.float64) / toks
                          for r in range(len(self.moe_layers))], dim=1)

    def cells(self) -> list[tuple[int, int]]:
        """Every (absolute MoE layer, expert), layer by layer: the columns of
        :meth:`per_prompt`."""
        return [(lay, e) for lay, n in zip(self.moe_layers, self.num_experts)
                for e in range(n)]

    def ranking(self, layer: int) -> list[int]:
        """The experts of ``layer``, most safety-relevant first (ties: lower index)."""
        r = self.row(layer)
        return sorted(range(self.num_experts[r]), key=lambda e: (-self.scores[r][e], e))

    def overview(self, layer: int) -> list[dict]:
        """One dict per expert of ``layer``, ranked by safety relevance: ``rank``,
        ``expert``, ``score``, ``low``, ``high``, ``stderr`` and the per-token and
        per-prompt frequencies on each set."""
        r = self.row(layer)
        th, tb = self.token_freq("harmful", layer), self.token_freq("benign", layer)
        ph, pb = self.prompt_freq("harmful", layer), self.prompt_freq("benign", layer)
        return [{"rank": i + 1, "layer": int(layer), "expert": e,
                 "score": self.scores[r][e], "low": self.low[r][e], "high": self.high[r][e],
                 "stderr": self.stderr[r][e], "harmful_token_freq": th[e],
                 "benign_token_freq": tb[e], "harmful_prompt_freq": ph[e],
                 "benign_prompt_freq": pb[e]}
                for i, e in enumerate(self.ranking(layer))]

    def page(self, layer: int, expert: int, *, routes: Sequence[dict] = (),
             rosais: Any = None) -> dict:
        """What the page of ``expert`` at ``layer`` shows: its overview row (rank included),
        the top tokens with their contexts, ``routes`` (the library's routes that force or
        mask it, as :func:`route_rows` gives them) and, from a
        :class:`~explorer.methods.rosais.RosaisResult` ``rosais`` at hand, the layer's
        RoSais score and rank (None otherwise)."""
        r = self.check(layer, expert)
        row = next(x for x in self.overview(layer) if x["expert"] == int(expert))
        return {**row, "num_experts": self.num_experts[r], "top_k": self.top_k[r],
                "prompts": {s: len(self.prompts[s]) for s in SETS},
                "top_tokens": self.top_tokens[r][int(expert)],
                "routes": list(routes), "rosais": layer_rosais(rosais, layer),
                "model": self.model, "prompt_set": self.prompt_set}

    def top(self, n: int = 3) -> dict[int, list[dict]]:
        """The ``n`` most safety-relevant experts of every MoE layer (overview rows)."""
        return {lay: self.overview(lay)[:n] for lay in self.moe_layers}

    def to_csv(self) -> str:
        """The overview of every layer as CSV text (one row per layer and expert)."""
        out = io.StringIO()
        rows = [x for lay in self.moe_layers for x in self.overview(lay)]
        w = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["layer"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return out.getvalue()


def layer_rosais(result: Any, layer: int) -> dict | None:
    """``{"score", "rank", "layers", "prompt"}`` of ``layer`` in a RoSais result (its rank
    among the result's MoE layers, 1 = highest), or None without a result or when the
    result does not cover ``layer``."""
    if result is None or int(layer) not in result.moe_layers:
        return None
    from explorer.methods.rosais import ranking
    i = result.moe_layers.index(int(layer))
    return {"score": float(result.scores[i]), "rank": ranking(result).index(int(layer)) + 1,
            "layers": len(result.moe_layers), "prompt": result.prompt}


def route_rows(found: Sequence[tuple[Any, str]]) -> list[dict]:
    """The page's rows for ``(stored route, "force" | "mask")`` pairs (see
    :meth:`explorer.storage.library.RouteStore.routes_with_expert`)."""
    return [{"id": sr.id, "mode": mode, "prompt": sr.prompt, "edits": sr.n_edits,
             "success": sr.success, "source": sr.source} for sr, mode in found]


# -- prompt sets ------------------------------------------------------------------------
def builtin_sets() -> tuple[list[str], list[str]]:
    """The project's own harmful and benign prompts."""
    return list(HARMFUL_PROMPTS), list(BENIGN_PROMPTS)


def selection_sets(path: str | Path | None = None) -> tuple[list[str], list[str], str]:
    """The harmful and benign prompts an expert selection is computed on, and their name:
    the project's own sets (:data:`BUILTIN_SET`) when ``path`` is None, else a JSON file
    ``{"harmful": [...], "benign": [...]}`` of the user's own prompts (named by its file
    name). :class:`InputError` in one line when the file cannot be read or holds no
    prompts. Benchmarks are for evaluation, never for selection: there is no CSV form."""
    if path is None:
        h, b = builtin_sets()
        return h, b, BUILTIN_SET
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read the prompt sets {str(path)[:80]!r}: "
                         f"{type(exc).__name__}") from None
    sets = []
    for key in SETS:
        got = data.get(key) if isinstance(data, dict) else None
        if not isinstance(got, list) or not got or not all(
                isinstance(x, str) and x.strip() for x in got):
            raise InputError(f"the prompt sets file {p.name!r} needs a non-empty list of "
                             f"prompts under {key!r}")
        sets.append([str(x) for x in got])
    return sets[0], sets[1], p.name


def memo_expert_stats(moe: MoEModel, harmful: Sequence[str], benign: Sequence[str],
                      prompt_set: str, *, system: str | None = None,
                      answer_tokens: int = 0) -> ExpertStats:
    """:func:`expert_stats` of these sets on ``moe``, computed once per model (kept in the
    model's own cache, :attr:`~explorer.core.cache.ModelCache.results`, keyed by the
    prompts, system prompt and positions): what the ``safex`` and ``l3`` attacks read."""
    key = ("expert_stats", set_hash(harmful, benign, system), int(answer_tokens))
    return moe.cache.memo(moe.cache.results, key, lambda: expert_stats(
        moe, harmful, benign, prompt_set=prompt_set, system=system,
        answer_tokens=answer_tokens), limit=64)


def mask_route(cells: Sequence[dict], info: dict[str, Any] | None = None):
    """The :class:`~explorer.core.route.Route` that masks ``cells`` (dicts with ``layer``
    and ``expert``) model-wide: ``mask(layer, None, experts)``, every position, generated
    tokens included; ``info``: its provenance."""
    from explorer.core.route import Route
    route = Route(info=dict(info or {}))
    by_layer: dict[int, list[int]] = {}
    for c in cells:
        by_layer.setdefault(int(c["layer"]), []).append(int(c["expert"]))
    for lay in sorted(by_layer):
        route.mask(lay, None, sorted(by_layer[lay]))
    return route


# -- the measurement --------------------------------------------------------------------
def _record(moe: MoEModel, seqs: list[list[int]]) -> tuple[dict, dict]:
    """Right-padded forward of ``seqs``: per MoE layer, experts (B, T, k) and the gap
    between the k-th and the next router logit at each selection (B, T), or None."""
    L = max(map(len, seqs))
    pad = moe.tokenizer.pad_token_id if moe.tokenizer is not None else None
    pad = 0 if pad is None else pad
    ids = torch.tensor([q + [pad] * (L - len(q)) for q in seqs], device=moe.device)
    mask = torch.tensor([[1] * len(q) + [0] * (L - len(q)) for q in seqs], device=moe.device)
    from explorer.core.forward import keep_kwargs
    with moe.lock, torch.inference_mode(), moe.control(record=True) as ctl:
        moe.model(input_ids=ids, attention_mask=mask, use_cache=False, **keep_kwargs(moe, 1))
    experts, gaps = {}, {}
    for lay in moe.moe_layers:
        rec = ctl.collected(lay)
        experts[lay] = rec["experts"]
        lg = rec.get("logits")
        k = rec["experts"].shape[-1]
        if lg is not None and lg.shape[-1] > k:
            top = lg.float().topk(k + 1, dim=-1).values
            gaps[lay] = top[..., k - 1] - top[..., k]
        else:
            gaps[lay] = None
    return experts, gaps


def _selections(moe: MoEModel, seqs: list[list[int]], batch_size: int | None
                ) -> tuple[list[dict], int]:
    """Per sequence: ``{layer: (T, k) experts}``, from batched forwards with near-tie rows
    recomputed alone; and how many rows were recomputed."""
    out: list[dict] = []
    redo = 0
    band = ROUTER_TIE_BAND.get(moe.info.dtype, ROUTER_TIE_BAND["float16"])
    n = max(map(len, seqs)) if seqs else 1
    bs = batch_size or memory_batch_size(moe, n, n, 1)
    for i in range(0, len(seqs), bs):
        chunk = seqs[i:i + bs]
        experts, gaps = _record(moe, chunk)
        for b, q in enumerate(chunk):
            near = len(chunk) > 1 and any(
                g is not None and bool((g[b, :len(q)] < band).any()) for g in gaps.values())
            if near:
                redo += 1
                alone, _ = _record(moe, [q])
                out.append({lay: alone[lay][0, :len(q)] for lay in moe.moe_layers})
            else:
                out.append({lay: experts[lay][b, :len(q)] for lay in moe.moe_layers})
    return out, redo


def bootstrap_weights(reps: int, nh: int, nb: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``reps`` seeded bootstrap resamples of a harmful set of ``nh`` prompts and a benign
    set of ``nb``, as counts: ``(reps, nh)`` and ``(reps, nb)`` float64 tensors whose row
    ``r`` says how often each prompt was drawn in resample ``r`` (each row sums to the set's
    size). ``weights @ per_prompt_values / n`` is then each resample's mean. The interval of
    :func:`expert_stats` and the stability selection of :mod:`explorer.methods.safex` both
    draw their resamples here."""
    g = torch.Generator().manual_seed(int(seed))
    wh = torch.zeros(reps, nh, dtype=torch.float64)
    wb = torch.zeros(reps, nb, dtype=torch.float64)
    wh.scatter_add_(1, torch.randint(nh, (reps, nh), generator=g),
                    torch.ones(reps, nh, dtype=torch.float64))
    wb.scatter_add_(1, torch.randint(nb, (reps, nb), generator=g),
                    torch.ones(reps, nb, dtype=torch.float64))
    return wh, wb


def _bootstrap(h: torch.Tensor, b: torch.Tensor, reps: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """2.5 and 97.5 percentiles of mean(h) - mean(b) with prompts resampled: ``h`` (nh, X),
    ``b`` (nb, X) per-prompt values; resampling counts from :func:`bootstrap_weights`."""
    nh, nb = h.shape[0], b.shape[0]
    wh, wb = bootstrap_weights(reps, nh, nb, seed)
    diff = wh @ h / nh - wb @ b / nb
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    lo, hi = torch.quantile(diff, q, dim=0)
    return lo, hi


def expert_stats(moe: MoEModel, harmful: Sequence[str] | None = None,
                 benign: Sequence[str] | None = None, *, prompt_set: str | None = None,
                 system: str | None = None, seed: int = 0,
                 bootstrap: int = EXPERT_BOOTSTRAP, top_tokens: int = EXPERT_TOP_TOKENS,
                 contexts: int = EXPERT_CONTEXTS, window: int = EXPERT_WINDOW,
                 batch_size: int | None = None, answer_tokens: int = 0) -> ExpertStats:
    """Selection frequencies and safety relevance of every (MoE layer, expert) of ``moe``
    on ``harmful`` and ``benign`` prompts (default: the project's own sets, named
    :data:`BUILTIN_SET`; name others with ``prompt_set``), templated with ``system``.

    One batched forward per set (``batch_size`` prompts a forward; default: sized to the
    free memory); ``bootstrap`` resamples (seeded by ``seed``) give the interval;
    ``top_tokens`` tokens per expert with up to ``contexts`` contexts each, ``window``
    tokens either side.

    ``answer_tokens`` > 0 measures the positions where the model *answers* instead of the
    templated prompt: each prompt's greedy answer (no route, up to ``answer_tokens``
    tokens) is generated first, and the counted positions are those whose forward
    produced an answer token (the last prompt position and every answer token but the
    last): the routing of the answer's own decoding steps, recomputed in one batched
    forward (causal, so the same selections)."""
    start = time.perf_counter()
    if harmful is None and benign is None:
        harmful, benign = builtin_sets()
        prompt_set = prompt_set or BUILTIN_SET
    if not harmful or not benign:
        raise InputError("expert statistics need at least one harmful and one benign prompt")
    if bootstrap < 1:
        raise InputError("bootstrap must be at least 1")
    if answer_tokens < 0:
        raise InputError("answer_tokens must be 0 (the prompt) or more (the answer)")
    sets = {"harmful": [str(x) for x in harmful], "benign": [str(x) for x in benign]}
    prepared = {s: [moe.prepare(x, system) for x in sets[s]] for s in SETS}
    layers = list(moe.moe_layers)
    infos = {h.info.index: h.info for h in moe.handles}
    E = [infos[lay].num_experts for lay in layers]
    counts: dict[str, list] = {}
    ntok: dict[str, list[int]] = {}
    redo = 0
    # token string -> [harmful count, benign count] and contexts, per (row, expert)
    tally: list[list[dict]] = [[{} for _ in range(e)] for e in E]
    for s in SETS:
        seqs = [list(p.ids) for p in prepared[s]]
        starts = [0] * len(seqs)
        if answer_tokens:
            seqs, starts = _answered(moe, seqs, answer_tokens)
        sel, r = _selections(moe, seqs, batch_size)
        redo += r
        ntok[s] = [len(q) - a for q, a in zip(seqs, starts)]
        counts[s] = [[torch.bincount(x[lay][a:].reshape(-1).long(), minlength=E[i]).tolist()
                      for x, a in zip(sel, starts)] for i, lay in enumerate(layers)]
        for p, (q, x, a) in enumerate(zip(seqs, sel, starts)):
            strings = moe.token_strings(q)
            for i, lay in enumerate(layers):
                for t, chosen in enumerate(x[lay].tolist()):
                    if t < a:
                        continue
                    for e in chosen:
                        d = tally[i][e].setdefault(strings[t], {"n": [0, 0], "ctx": []})
                        d["n"][SETS.index(s)] += 1
                        if len(d["ctx"]) < contexts:
                            d["ctx"].append({
                                "set": s, "prompt": p, "position": t,
                                "left": "".join(strings[max(0, t - window):t]),
                                "token": strings[t],
                                "right": "".join(strings[t + 1:t + 1 + window])})
    scores, low, high, se = [], [], [], []
    for i in range(len(layers)):
        f = {s: torch.tensor(counts[s][i], dtype=torch.float64)
             / torch.tensor(ntok[s], dtype=torch.float64).unsqueeze(1) for s in SETS}
        h, b = f["harmful"], f["benign"]
        diff = h.mean(0) - b.mean(0)
        var = (h.var(0, unbiased=True) / h.shape[0] if h.shape[0] > 1 else torch.zeros_like(diff)) \
            + (b.var(0, unbiased=True) / b.shape[0] if b.shape[0] > 1 else torch.zeros_like(diff))
        lo, hi = _bootstrap(h, b, bootstrap, seed * 1_000_003 + layers[i])
        scores.append(diff.tolist())
        low.append(lo.tolist())
        high.append(hi.tolist())
        se.append(var.sqrt().tolist())
    tops = []
    for i in range(len(layers)):
        row = []
        for e in range(E[i]):
            items = sorted(tally[i][e].items(), key=lambda kv: (-sum(kv[1]["n"]), kv[0]))
            row.append([{"token": tok, "harmful": d["n"][0], "benign": d["n"][1],
                         "contexts": d["ctx"]} for tok, d in items[:top_tokens]])
        tops.append(row)
    positions = f"answer ({answer_tokens} tokens)" if answer_tokens else "templated prompt"
    info = dict(moe.provenance(system))
    info.update(prompt_set=prompt_set or "custom", seed=seed, bootstrap=bootstrap,
                prompt_set_hash=set_hash(sets["harmful"], sets["benign"], system),
                positions=positions, answer_tokens=int(answer_tokens), version=CACHE_VERSION)
    return ExpertStats(model=moe.name, prompt_set=prompt_set or "custom", moe_layers=layers,
                       num_experts=E, top_k=[infos[lay].top_k for lay in layers],
                       prompts=sets, tokens=ntok, counts=counts, scores=scores, low=low,
                       high=high, stderr=se, top_tokens=tops, seed=seed, bootstrap=bootstrap,
                       recomputed=redo, seconds=round(time.perf_counter() - start, 3),
                       positions="answer" if answer_tokens else "prompt",
                       answer_tokens=int(answer_tokens), info=json.loads(json.dumps(info)))


def _answered(moe: MoEModel, seqs: list[list[int]], answer_tokens: int
              ) -> tuple[list[list[int]], list[int]]:
    """Each prompt followed by its greedy answer (no route), without the answer's last
    token, and the first position whose forward produced an answer token (the prompt's
    last)."""
    from explorer.core.forward import generate
    out, starts = [], []
    for q in seqs:
        gen = generate(moe, q, None, max_new_tokens=answer_tokens)
        out.append(list(gen.ids)[:-1] if len(gen.ids) > len(q) else list(q))
        starts.append(len(q) - 1)
    return out, starts


def set_hash(harmful: Sequence[str], benign: Sequence[str], system: str | None = None) -> str:
    """A short fingerprint of a pair of prompt sets and a system prompt."""
    blob = json.dumps([list(harmful), list(benign), system], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def cache_path(moe: MoEModel, cache_dir: str | Path, harmful: Sequence[str],
               benign: Sequence[str], system: str | None = None, seed: int = 0,
               bootstrap: int = EXPERT_BOOTSTRAP, answer_tokens: int = 0) -> Path:
    """Where :func:`cached_expert_stats` keeps the statistics of these sets on ``moe``:
    ``<cache_dir>/<model>-<key>.json``, the key covering the model's provenance (revision,
    transformers version, chat template), the prompts, system prompt, seed and
    resamples (and ``answer_tokens`` when measuring answers)."""
    prov = moe.provenance(system)
    parts = [prov, set_hash(harmful, benign, system), seed, bootstrap, CACHE_VERSION]
    if answer_tokens:
        parts.append({"answer_tokens": int(answer_tokens)})
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                         ).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", moe.name)[-60:] or "model"
    return Path(cache_dir) / f"{safe}-{key}.json"


def cached_expert_stats(moe: MoEModel, cache_dir: str | Path,
                        harmful: Sequence[str] | None = None,
                        benign: Sequence[str] | None = None, *, prompt_set: str | None = None,
                        system: str | None = None, seed: int = 0,
                        bootstrap: int = EXPERT_BOOTSTRAP, **kw) -> ExpertStats:
    """:func:`expert_stats`, computed once per model and prompt set: read from
    :func:`cache_path` when there, else computed and written there (atomically). A cache
    file that cannot be read is computed again."""
    if harmful is None and benign is None:
        harmful, benign = builtin_sets()
        prompt_set = prompt_set or BUILTIN_SET
    path = cache_path(moe, cache_dir, harmful, benign, system, seed, bootstrap,
                      kw.get("answer_tokens", 0))
    if path.is_file():
        try:
            return ExpertStats.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            pass
    stats = expert_stats(moe, harmful, benign, prompt_set=prompt_set, system=system,
                         seed=seed, bootstrap=bootstrap, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(stats.to_json(), encoding="utf-8")
    tmp.replace(path)
    return stats


__all__ = ["BUILTIN_SET", "ExpertStats", "bootstrap_weights", "builtin_sets", "cache_path",
           "cached_expert_stats", "expert_stats", "layer_rosais", "mask_route",
           "memo_expert_stats", "route_rows", "selection_sets", "set_hash"]
