"""The named API endpoints (for ``gradio_client``; listed on the app's API page). Each
returns the same JSON object as the matching CLI ``--json`` command. Their names and
parameters are a public promise: ``trace``, ``generate``, ``rosais``, ``search_start``,
``search_status``, ``search_cancel``, ``routes``, ``replay``.

Every endpoint applies the app's hosted policy: prompt and generation caps, the search
budget, jobs per client and the rate limit (model work and new jobs count; status, cancel
and listing do not), and the redaction of real models' harmful answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from explorer.app.common import (
    FREE,
    MAX_ROW_ID,
    MODEL_SLOT,
    fail,
    fraction,
    gpu,
    need_prompt,
    text_arg,
    user_errors,
    whole_number,
)
from explorer.core.defaults import (
    DEFAULT_TARGET,
    DEFAULT_THRESHOLD,
    FSOUR_CANDIDATES,
    MAX_NEW_TOKENS,
    MAX_SAMPLES,
    MAX_SEED,
    RESEARCH_MAX_NEW_TOKENS,
    ROSAIS_SAMPLES,
)
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.app.context import Explorer


def register_api(ctx: Explorer) -> None:
    """Named endpoints: each returns the matching CLI ``--json`` object."""
    from explorer.core.trace import trace_json

    def _route_arg(route: str) -> Route | None:
        route = text_arg(route, "route")
        return Route.from_json(route) if route.strip() else None

    @gpu(60)
    def trace(prompt: str, max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS, route: str = "",
              system: str = "", request: gr.Request = None) -> dict:
        """Record the experts every token uses (optionally under a route JSON, with a
        system prompt); the CLI `trace --json` object: tokens, prompt_tokens, moe_layers,
        experts, weights..."""
        with user_errors("trace"):
            from explorer.core.trace import trace as run
            moe = ctx.require()
            sp = ctx.system(text_arg(system, "system"))
            n_prompt = ctx.check_prompt(text_arg(prompt, "prompt"), sp)
            n = ctx.new_tokens(max_new_tokens, "max_new_tokens")
            r = _route_arg(route)
            ctx.check_route(r, n_prompt, sp)
            ctx.admit(request)
            tr = run(moe, prompt, max_new_tokens=n, route=r, record_logits=False, system=sp)
            return ctx.shown_json(trace_json(moe, tr), prompt)

    @gpu(60)
    def generate(prompt: str, max_new_tokens: int = MAX_NEW_TOKENS, route: str = "",
                 system: str = "", request: gr.Request = None) -> dict:
        """Greedy generation, streamed: {"model", "prompt", "completion" (text so far),
        "route", "done"} (and "system" when one was given); the last message has done =
        true."""
        with user_errors("generate"):
            moe = ctx.require()
            sp = ctx.system(text_arg(system, "system"))
            n_prompt = ctx.check_prompt(text_arg(prompt, "prompt"), sp)
            r = _route_arg(route)
            n = ctx.new_tokens(max_new_tokens, "max_new_tokens")
            ctx.check_route(r, n_prompt, sp)
            ctx.admit(request)
            extra = {"system": sp} if sp is not None else {}
            for text, tr in ctx.stream(prompt, n, r, sp):
                yield {"model": moe.name, "prompt": prompt, "completion": text,
                       "route": r.to_dict() if r is not None else None, "done": tr is not None,
                       **extra}

    @gpu(180)
    def rosais(prompt: str, samples: int = ROSAIS_SAMPLES, top: int = 5, mask_ratio: float = 0.5,
               seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS, system: str = "",
               request: gr.Request = None) -> dict:
        """RoSais per MoE layer and the top-L masked answer (optionally with a system
        prompt); the CLI `rosais --json` object."""
        with user_errors("rosais"):
            from explorer.methods.rosais import rosais as run
            moe = ctx.require()
            sp = ctx.system(text_arg(system, "system"))
            ctx.check_prompt(text_arg(prompt, "prompt"), sp)
            samples = whole_number(samples, "samples", 1, MAX_SAMPLES)
            ctx.check_rosais(samples)
            n = ctx.new_tokens(max_new_tokens, "max_new_tokens")
            ctx.admit(request)
            d = run(moe, prompt, samples=samples, top=whole_number(top, "top", 0, 4096),
                    mask_ratio=fraction(mask_ratio, "mask_ratio"),
                    seed=whole_number(seed, "seed", 0, MAX_SEED),
                    max_new_tokens=n, system=sp).to_dict()
            for key in ("completion", "baseline_completion"):
                if isinstance(d.get(key), str):
                    d[key] = ctx.shown(prompt, d[key])
            return d

    def search_start(prompt: str, target: str = DEFAULT_TARGET, candidates: int = FSOUR_CANDIDATES,
                     threshold: float = DEFAULT_THRESHOLD, max_iters: int = 5, seed: int = 0,
                     engine: str = "fast", max_new_tokens: int = MAX_NEW_TOKENS,
                     judge: str = "keyword", system: str = "",
                     request: gr.Request = None) -> dict:
        """Queue an F-SOUR search in the background; returns {"job_id": ...}. `threshold`
        is a log-probability (default log 0.8); `system`: a system prompt (default none)."""
        with user_errors("search_start"):
            ctx.require_jobs()
            need_prompt(text_arg(prompt, "prompt"))
            if not text_arg(target, "target").strip():
                fail("the target is empty")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                    or not threshold <= 0:
                fail("the threshold is a log-probability: it must be a number <= 0")
            ctx.judge(text_arg(judge, "judge"))  # unknown or unconfigured judges fail here
            params = {"prompt": prompt, "target": target,
                      "candidates": candidates, "threshold": threshold,
                      "max_iters": max_iters, "seed": seed, "engine": text_arg(engine, "engine"),
                      "max_new_tokens": max_new_tokens, "judge": judge,
                      "system": ctx.system(text_arg(system, "system"))}
            return {"job_id": ctx.submit_search(params, ctx.owner(request), request)}

    def search_status(job_id: str, request: gr.Request = None) -> dict:
        """A search's status: id, kind, status, params, progress, result (the CLI
        `fsour --json` object once done), error, route_id, created, updated. Only the
        client that started a search can read, cancel or resume it."""
        with user_errors("search_status"):
            return ctx.job_status(text_arg(job_id, "job_id"), ctx.owner(request))

    def search_cancel(job_id: str, request: gr.Request = None) -> dict:
        """Cancel a queued or running search (resumable); returns its status."""
        with user_errors("search_cancel"):
            return ctx.cancel_job(text_arg(job_id, "job_id"), ctx.owner(request))

    def search_resume(job_id: str, request: gr.Request = None) -> dict:
        """Queue an 'interrupted' or 'cancelled' search again; it continues from its last
        checkpoint (same seed, same route as an uninterrupted run). Returns its status."""
        with user_errors("search_resume"):
            return ctx.resume_job(text_arg(job_id, "job_id"), ctx.owner(request), request)

    def routes(model: str = "", text: str = "", success: str = "", source: str = "",
               limit: int = 500) -> list:
        """Routes in the library (newest first), filtered by model, text, success
        ("true"/"false") and source; each a StoredRoute dict."""
        with user_errors("routes"):
            ok = {"true": True, "yes": True, "1": True, "false": False, "no": False,
                  "0": False}.get(str(success).strip().lower())
            out = []
            model, text = text_arg(model, "model"), text_arg(text, "text")
            source = text_arg(source, "source")
            for r in ctx.store.list_routes(model=model or None, text=text or None, success=ok,
                                           source=source or None,
                                           limit=whole_number(limit, "limit", 1, 100_000)):
                out.append(ctx.shown_route(r.to_dict()))
            return out

    @gpu(60)
    def replay(route_id: int = 0, prompt: str = "", route: str = "",
               max_new_tokens: int = MAX_NEW_TOKENS, system: str = "",
               request: gr.Request = None) -> dict:
        """Replay a stored route (route_id) or a route JSON on its prompt or `prompt`, with
        its own system prompt or `system`; the CLI `trace --json` object of the replayed
        run."""
        with user_errors("replay"):
            from explorer.core.trace import trace as run
            moe = ctx.require()
            prompt = text_arg(prompt, "prompt")
            if text_arg(route, "route").strip():
                r = Route.from_json(route)
                p = prompt if prompt.strip() else r.info.get("prompt")
            else:
                sr = ctx.store.get_route(whole_number(route_id, "route_id", 1, MAX_ROW_ID))
                r, p = sr.route, (prompt if (prompt or "").strip() else sr.prompt)
            sp = ctx.system(text_arg(system, "system")) or r.system
            n_prompt = ctx.check_prompt(p, sp)
            n = ctx.new_tokens(max_new_tokens, "max_new_tokens")
            ctx.check_route(r, n_prompt, sp)
            ctx.admit(request)
            tr = run(moe, p, max_new_tokens=n, route=r, record_logits=False, system=sp)
            return ctx.shown_json(trace_json(moe, tr), p)

    for fn, slot in ((trace, MODEL_SLOT), (generate, MODEL_SLOT), (rosais, MODEL_SLOT),
                     (search_start, FREE), (search_status, FREE), (search_cancel, FREE),
                     (search_resume, FREE),
                     (routes, FREE), (replay, MODEL_SLOT)):
        gr.api(fn, api_name=fn.__name__, **slot)
