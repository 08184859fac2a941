"""The named API endpoints (for ``gradio_client``; listed on the app's API page). Each
returns the same JSON object as the matching CLI ``--json`` command. Their names and
parameters are a public promise: ``trace``, ``generate``, ``rosais``, ``search_start``,
``search_status``, ``search_cancel``, ``search_resume``, ``routes``, ``replay``, and
``attack_start`` (any attack that runs as a background job, its parameters as JSON).

Each endpoint is a module-level view registered through the gate
(:meth:`explorer.app.gate.Gate.endpoint`), which admits every call (rates; model work and
new jobs cost more than reads) before the view asks for its caps (prompt, generation,
route size, search budget) and redacts what it returns as hosted mode asks."""

from __future__ import annotations

from explorer.app import searches
from explorer.app.errors import fail
from explorer.app.gate import Door, Gate, Visit
from explorer.app.inputs import MAX_ROW_ID, text_arg, whole_number
from explorer.app.library_access import library
from explorer.attacks import get_attack
from explorer.core.defaults import (
    DEFAULT_TARGET,
    DEFAULT_THRESHOLD,
    FSOUR_CANDIDATES,
    FSOUR_MAX_ITERS,
    MAX_NEW_TOKENS,
    MAX_SEED,
    RESEARCH_MAX_NEW_TOKENS,
    ROSAIS_MASK_RATIO,
    ROSAIS_SAMPLES,
    ROSAIS_TOP,
)
from explorer.core.route import Route


def _route_arg(route: str) -> Route | None:
    route = text_arg(route, "route")
    return Route.from_json(route) if route.strip() else None


def trace(visit: Visit, prompt: str, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS,
          route: str = "", system: str = "") -> dict:
    """Record the experts every token uses (optionally under a route JSON, with a system
    prompt); the CLI `trace --json` object: tokens, prompt_tokens, moe_layers, experts,
    weights..."""
    from explorer.core.trace import trace as run
    from explorer.core.trace import trace_json
    moe = visit.moe
    p = visit.prompt(text_arg(prompt, "prompt"), text_arg(system, "system"))
    n = visit.tokens(max_new_tokens, "max_new_tokens")
    r = _route_arg(route)
    visit.route(r, p)
    tr = run(moe, p, max_new_tokens=n, route=r, record_logits=False, validate=False)
    return visit.app.gate.shown_json(trace_json(moe, tr), p.text)


def generate(visit: Visit, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS, route: str = "",
             system: str = "") -> dict:
    """Greedy generation, streamed: {"model", "prompt", "completion" (text so far),
    "route", "done"} (and "system" when one was given); the last message has done = true."""
    from explorer.app.streaming import stream_shown
    moe = visit.moe
    p = visit.prompt(text_arg(prompt, "prompt"), text_arg(system, "system"))
    r = _route_arg(route)
    n = visit.tokens(max_new_tokens, "max_new_tokens")
    visit.route(r, p)
    extra = {"system": p.system} if p.system is not None else {}
    for text, tr in stream_shown(visit, p, n, r):
        yield {"model": moe.name, "prompt": p.text, "completion": text,
               "route": r.to_dict() if r is not None else None, "done": tr is not None,
               **extra}


def rosais(visit: Visit, prompt: str, samples: int = ROSAIS_SAMPLES, top: int = ROSAIS_TOP,
           mask_ratio: float = ROSAIS_MASK_RATIO, seed: int = 0,
           max_new_tokens: int = MAX_NEW_TOKENS, system: str = "") -> dict:
    """RoSais per MoE layer and the top-L masked answer (optionally with a system prompt);
    the CLI `rosais --json` object."""
    from explorer.methods.rosais import rosais as run
    moe = visit.moe
    attack = get_attack("rosais")
    p = visit.prompt(text_arg(prompt, "prompt"), text_arg(system, "system"))
    params = attack.Params.parse({"samples": samples, "top": top, "mask_ratio": mask_ratio})
    n = visit.tokens(max_new_tokens, "max_new_tokens")
    visit.afford(attack, params, p, n,
                 f"RoSais with {params.samples} masks x {len(moe.moe_layers)} layers")
    d = run(moe, p, samples=params.samples, top=params.top, mask_ratio=params.mask_ratio,
            seed=whole_number(seed, "seed", 0, MAX_SEED), max_new_tokens=n).to_dict()
    for key in ("completion", "baseline_completion"):
        if isinstance(d.get(key), str):
            d[key] = visit.shown(p.text, d[key])
    return d


def search_start(visit: Visit, prompt: str, target: str = DEFAULT_TARGET,
                 candidates: int = FSOUR_CANDIDATES, threshold: float = DEFAULT_THRESHOLD,
                 max_iters: int = FSOUR_MAX_ITERS, seed: int = 0, engine: str = "fast",
                 max_new_tokens: int = MAX_NEW_TOKENS, judge: str = "keyword",
                 system: str = "") -> dict:
    """Queue an F-SOUR search in the background; returns {"job_id": ...}. `threshold` is a
    log-probability (default log 0.8); `system`: a system prompt (default none)."""
    params = {"prompt": text_arg(prompt, "prompt"), "target": text_arg(target, "target"),
              "candidates": candidates, "threshold": threshold, "max_iters": max_iters,
              "seed": seed, "engine": text_arg(engine, "engine"),
              "max_new_tokens": max_new_tokens, "judge": text_arg(judge, "judge"),
              "system": visit.system(text_arg(system, "system"))}
    return {"job_id": searches.submit(visit, "fsour", params, visit.owner())}


def attack_start(visit: Visit, method: str, prompt: str, params: str = "{}",
                 max_new_tokens: int = MAX_NEW_TOKENS, judge: str = "keyword", seed: int = 0,
                 system: str = "") -> dict:
    """Queue a background search of any attack that runs as a job (`method`; F-SOUR's is
    `fsour`), its parameters a JSON object (missing ones take the attack's defaults);
    returns {"job_id": ...}. Read, cancel and resume it with the search_* endpoints."""
    method = searches.job_method(text_arg(method, "method"))
    values = searches.params_from_json(text_arg(params, "params"))
    run = {"prompt": text_arg(prompt, "prompt"), "max_new_tokens": max_new_tokens,
           "judge": text_arg(judge, "judge"), "seed": seed,
           "system": visit.system(text_arg(system, "system"))}
    clash = sorted(set(values) & set(run))
    if clash:
        fail(f"params may not set {clash}: they are this endpoint's own arguments")
    return {"job_id": searches.submit(visit, method, {**values, **run},
                                      visit.owner())}


def search_status(visit: Visit, job_id: str) -> dict:
    """A search's status: id, kind, status, params, progress, result (the CLI `fsour
    --json` object once done), error, route_id, created, updated. Only the client that
    started a search can read, cancel or resume it."""
    return searches.status(visit.app, text_arg(job_id, "job_id"),
                           visit.owner())


def search_cancel(visit: Visit, job_id: str) -> dict:
    """Cancel a queued or running search (resumable); returns its status."""
    return searches.cancel(visit.app, text_arg(job_id, "job_id"),
                           visit.owner())


def search_resume(visit: Visit, job_id: str) -> dict:
    """Queue an 'interrupted' or 'cancelled' search again; it continues from its last
    checkpoint (same seed, same route as an uninterrupted run). Returns its status."""
    return searches.resume(visit, text_arg(job_id, "job_id"), visit.owner())


def routes(visit: Visit, model: str = "", text: str = "", success: str = "", source: str = "",
           limit: int = 500) -> list:
    """Routes in the library (newest first), filtered by model, text, success
    ("true"/"false") and source; each a StoredRoute dict. On a hosted server: this
    client's own routes and the ones their owners shared ("shared"; "yours": whether it
    is this client's)."""
    ok = {"true": True, "yes": True, "1": True, "false": False, "no": False,
          "0": False}.get(str(success).strip().lower())
    model, text = text_arg(model, "model"), text_arg(text, "text")
    source = text_arg(source, "source")
    gate, lib = visit.app.gate, library(visit)
    return [gate.shown_route(lib.as_dict(r))
            for r in lib.list(model=model or None, text=text or None, success=ok,
                              source=source or None,
                              limit=whole_number(limit, "limit", 1, 100_000))]


def replay(visit: Visit, route_id: int = 0, prompt: str = "", route: str = "",
           max_new_tokens: int = MAX_NEW_TOKENS, system: str = "") -> dict:
    """Replay a stored route (route_id; on a hosted server, one of this client's or a
    shared one) or a route JSON on its prompt or `prompt`, with its own system prompt or
    `system`; the CLI `trace --json` object of the replayed run."""
    from explorer.core.trace import trace as run
    from explorer.core.trace import trace_json
    moe = visit.moe
    prompt = text_arg(prompt, "prompt")
    if text_arg(route, "route").strip():
        r = Route.from_json(route)
        q = prompt if prompt.strip() else r.info.get("prompt")
    else:
        sr = library(visit).get(whole_number(route_id, "route_id", 1, MAX_ROW_ID))
        r, q = sr.route, (prompt if prompt.strip() else sr.prompt)
    p = visit.prompt(q, visit.system(text_arg(system, "system")) or r.system)
    n = visit.tokens(max_new_tokens, "max_new_tokens")
    visit.route(r, p)
    tr = run(moe, p, max_new_tokens=n, route=r, record_logits=False, validate=False)
    return visit.app.gate.shown_json(trace_json(moe, tr), p.text)


#: Every endpoint and its door (model work waits for the model's slot, in a ZeroGPU window
#: where there is one).
ENDPOINTS = (
    (trace, Door("trace", "model", gpu=60, api=True)),
    (generate, Door("generate", "model", gpu=60, api=True)),
    (rosais, Door("rosais", "model", gpu=180, api=True)),
    (search_start, Door("search_start", "job", api=True)),
    (attack_start, Door("attack_start", "job", api=True)),
    (search_status, Door("search_status", "poll", api=True)),
    (search_cancel, Door("search_cancel", "light", api=True)),
    (search_resume, Door("search_resume", "job", api=True)),
    (routes, Door("routes", "light", api=True)),
    (replay, Door("replay", "model", gpu=60, api=True)),
)


def register_api(gate: Gate) -> None:
    """Register every named endpoint through ``gate`` (inside the open ``gr.Blocks``)."""
    for view, door in ENDPOINTS:
        gate.endpoint(view, door)
