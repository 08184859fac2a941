"""A visitor's background searches: queued (checked once, against the server's caps and the
attack's cost), read, stopped and resumed only by their owner, with answers shown as the
server shows them. Every job kind is an attack of the registry that runs as a job
(:func:`explorer.attacks.list_attacks`, ``"job"``), or an evaluation of the project's own
prompts (:data:`explorer.storage.jobs.EVALUATE_JOB`, the Results tab's)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from explorer.app.errors import fail
from explorer.attacks import list_attacks
from explorer.core.defaults import DEFAULT_TARGET, MAX_NEW_TOKENS

if TYPE_CHECKING:
    from explorer.app.context import Explorer
    from explorer.app.gate import Visit


MAX_PARAMS_CHARS = 10_000  # a job's parameters as JSON (the Search tab's box, attack_start)


def job_method(method: str) -> str:
    """``method`` if it names an attack that runs as a background job, else a clear error."""
    if method not in list_attacks("job"):
        fail(f"Unknown method {method[:40]!r}; background searches: {list_attacks('job')}.")
    return method


def params_from_json(text: str, what: str = "params") -> dict:
    """A job's parameters typed as a JSON object (``{}`` when blank), bounded before it is
    read; their values are checked with the rest by :func:`check_search`."""
    text = (text or "").strip() or "{}"
    if len(text) > MAX_PARAMS_CHARS:
        fail(f"{what}: {len(text)} characters; at most {MAX_PARAMS_CHARS} are accepted.")
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):
        fail(f"{what}: not valid JSON.")
    if not isinstance(values, dict):
        fail(f'{what}: a JSON object is expected: {{"name": value, ...}}.')
    return values


def check_search(visit: Visit, kind: str, params: dict) -> dict:
    """The job ``params`` of attack ``kind`` checked once before anything is queued: their
    bounds (:func:`explorer.storage.jobs.validate_params`), then this server's caps: the
    prompt's characters and tokens, the answer's length, the judge, and the attack's cost
    (:meth:`~explorer.attacks.Attack.cost`) against the search budget. Returns the checked
    parameters (the ones given, normalised)."""
    from explorer.app.inputs import need_prompt
    from explorer.storage.jobs import job_attack, validate_params
    attack = job_attack(kind)
    need_prompt(params.get("prompt") if isinstance(params, dict) else None)
    visit.judge(params.get("judge"))  # first: only the judges this server offers are named
    params = validate_params(kind, params)
    prompt = visit.prompt(params.get("prompt"), params.get("system"))
    n = visit.tokens(params.get("max_new_tokens", MAX_NEW_TOKENS), "max_new_tokens")
    specs = attack.Params.specs()
    own = attack.Params(**{k: v for k, v in params.items() if k in specs})  # checked above
    target = (getattr(own, "target", None) or DEFAULT_TARGET) if "target" in specs else None
    visit.afford(attack, own, prompt, n, f"this {own.what.removesuffix(' parameters')} search",
                 target=target)
    return params


def check_evaluation(visit: Visit, params: dict) -> dict:
    """An evaluate job's ``params`` (:data:`explorer.storage.jobs.EVALUATE_JOB`) checked
    once before it is queued: their bounds
    (:func:`explorer.storage.jobs.validate_evaluate_params`), then this server's caps: the
    judge, every prompt's characters and tokens, the answer's length, and the method's
    cost summed over the prompts against the search budget. Returns the checked
    parameters."""
    from explorer.attacks import Shape
    from explorer.evaluation.evaluate import method_attack
    from explorer.storage.jobs import evaluate_rows, validate_evaluate_params
    moe = visit.moe
    visit.judge(params.get("judge") if isinstance(params, dict) else None)
    params = validate_evaluate_params(params)
    n = visit.tokens(params.get("max_new_tokens", MAX_NEW_TOKENS), "max_new_tokens")
    attack = method_attack(params["method"])
    specs = attack.Params.specs()
    own = attack.Params(**{k: v for k, v in params.items() if k in specs})  # checked above
    target = (getattr(own, "target", None) or DEFAULT_TARGET) if "target" in specs else None
    target_tokens = 0 if target is None else len(moe.target_ids(target))
    rows = evaluate_rows(params)
    total = 0.0
    for row in rows:
        prompt = visit.prompt(row["goal"], params.get("system"))
        total += attack.cost(own, Shape(prompt_tokens=prompt.num_tokens,
                                        moe_layers=len(moe.moe_layers), max_new_tokens=n,
                                        target_tokens=target_tokens))
    visit.budget(total, f"this evaluation of {len(rows)} prompts")
    return params


def submit(visit: Visit, kind: str, params: dict, owner: str) -> str:
    """Check (:func:`check_search`) and queue a job of ``kind`` owned by ``owner``; returns
    its id. The job caps (per owner, per client address, in all) are the job manager's."""
    jobs = visit.app.host.require_jobs()
    params = check_search(visit, kind, params)
    return jobs.submit(kind, params, session=owner, checked=True,
                       group=visit.address if visit.policy.enabled else None)


def status(app: Explorer, job_id: Any, owner: str) -> dict:
    """``owner``'s job ``job_id`` as its status dict (answers as the server shows them;
    no owner key in it); another's or an unknown id: "no job with that id"."""
    app.owners.owned_job(app.store, job_id, owner)
    st = app.jobs.status(job_id) if app.jobs is not None else \
        app.store.get_job(job_id).to_dict()
    return app.gate.shown_job(st)


def cancel(app: Explorer, job_id: Any, owner: str) -> dict:
    """Cancel ``owner``'s job ``job_id``; its status."""
    app.owners.owned_job(app.store, job_id, owner)
    app.host.require_jobs().cancel(job_id)
    return status(app, job_id, owner)


def resume(visit: Visit, job_id: Any, owner: str) -> dict:
    """Queue ``owner``'s interrupted or cancelled job again, checked like a new one (it
    counts against the same caps); its status."""
    app = visit.app
    from explorer.storage.jobs import EVALUATE_JOB
    rec = app.owners.owned_job(app.store, job_id, owner)
    jobs = app.host.require_jobs()
    if rec.kind == EVALUATE_JOB:
        check_evaluation(visit, dict(rec.params))
    else:
        check_search(visit, rec.kind, dict(rec.params))
    jobs.resume(job_id, group=visit.address if visit.policy.enabled else None)
    return status(app, job_id, owner)
