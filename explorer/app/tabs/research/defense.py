"""The Research tab's Defense view: derive a route-disabling defense from attack evidence
(or take one), attack held-out prompts without and with it, and measure its utility cost.

``defense_view(visit, ...)`` turns UI values into :mod:`explorer.research.defense` calls and its
result into a figure, a table and a summary; bad input raises a one-line ``gr.Error``.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from explorer.app.errors import fail
from explorer.app.gate import Visit
from explorer.app.inputs import whole_number
from explorer.app.library_access import library
from explorer.app.tabs.research.common import (
    attack_choices,
    generation_settings,
    library_routes,
    parse_ids,
    parse_route_json,
    prompt_lines,
    prompt_tokens,
    run_with_progress,
)
from explorer.core.defaults import DEFAULT_TARGET
from explorer.viz import research as pr
from explorer.viz.text import pct

__all__ = ["DEFENSE_COLUMNS", "defense_view"]

DEFENSE_COLUMNS = ["attack", "prompts", "ASR without defense", "ASR with defense"]
#: About how many forward passes the demo model runs a second on a CPU (progress only).
PASSES_PER_SECOND = 60.0


def _attacks(attacks) -> list[str]:
    attacks = [a for a in (attacks or []) if a]
    valid = {v for _, v in attack_choices()}
    bad = [a for a in attacks if a not in valid]
    if bad or not attacks:
        fail(f"Unknown attack {bad[0]!r}" if bad else "Tick at least one attack.")
    return attacks


def _given_defense(moe, defense_json):
    """The pasted defense route (validated, mask edits only), or None."""
    given = parse_route_json(defense_json)
    if len(given) > 1:
        fail("Paste one defense route.")
    if not given:
        return None
    given[0].validate(moe.info)
    if any(e.mode != "mask" for e in given[0].edits):
        fail("A defense route holds only mask edits.")
    return given[0]


def attack_groups(attacks: list[str]) -> list[list[str]]:
    """The calls the view makes, in the order asked: an attack that copies route sizes
    (random) runs with the first attack that gives them (F-SOUR), in one call (a call of its
    own would search the routes again)."""
    from explorer.attacks import get_attack
    givers = [a for a in attacks if get_attack(a).gives_sizes]
    return [[a] + ([x for x in attacks if get_attack(x).needs_sizes]
                   if a == (givers[0] if givers else None) else [])
            for a in attacks if not (get_attack(a).needs_sizes and givers)]


def _summary(defense, routes, rosais_results, given, harmful, benign, jd, util,
             insample) -> str:
    from explorer.research.defense import describe_defense
    md = (f"**Defense:** {describe_defense(defense)} (evidence: {len(routes)} routes, "
          f"{len(rosais_results)} RoSais results{'' if given is None else '; given route'})"
          f" · {len(harmful)} harmful prompts attacked · judge "
          f"`{jd.name if hasattr(jd, 'name') else 'keyword'}`")
    if util:
        md += (f"\n\n**Utility cost** on {len(benign)} benign prompts: refusals "
               f"{pct(util['baseline_refusal_rate'])} → "
               f"{pct(util['routes'][0]['refusal_rate'])}, ΔLL "
               f"{util['ll_change']:+.3f} nats/token")
    if insample:
        md += (f"\n\n⚠ {len(insample)} attacked prompt(s) also gave evidence: those "
               "figures are in-sample.")
    return md


def _replaced_view(visit: Visit, defense_cls, harmful, benign, attacks, S, L, N, It, n, jd,
                   progress):
    """A defense that replaces the model (``hardened``): each attack against the model and
    against the defense's checkpoint (its default: the bundled one for the demo model; the
    app offers no other path), and the checkpoint's utility cost."""
    from explorer.attacks import Shape, get_attack
    from explorer.core.errors import InputError
    from explorer.research.defense import defense_params
    moe = visit.moe
    if any(get_attack(a).needs_routes for a in attacks):
        fail(f"The {defense_cls.name} mode runs attacks that search their own routes.")
    params = defense_cls.Params()
    try:
        defense_cls.check(moe, params, load=visit.app.host.hardened)
    except InputError as exc:
        fail(str(exc))
    shape = Shape(prompt_tokens=prompt_tokens(visit, harmful), moe_layers=len(moe.moe_layers),
                  max_new_tokens=n, target_tokens=len(moe.target_ids(DEFAULT_TARGET)))
    costs = {a: get_attack(a).cost(defense_params(get_attack(a), top=L, samples=S,
                                                  candidates=N, max_iters=It), shape) + n
             for a in attacks}
    visit.budget(sum(2 * len(harmful) * c for c in costs.values()) + 2 * n * len(benign),
                 "this defense evaluation")
    applied = defense_cls.build(moe, params, load=visit.app.host.hardened)
    defense = applied.record
    res = run_with_progress(progress, lambda: defense_cls.evaluate(
        moe, applied, harmful, benign or None, attacks=attacks,
        rosais_top=L, samples=S, candidates=N, max_iters=It, max_new_tokens=n, judge=jd),
        f"attacks against the model and the {defense_cls.label}", 0.0, 1.0,
        2 * len(harmful) * sum(costs.values()) / PASSES_PER_SECOND + 2.0 * len(benign))
    result = res.to_dict()
    rows = [[a, next((x["n"] for x in res.attacks if x["attack"] == a), 0),
             pct(t.get("before")), pct(t.get("after"))] for a, t in res.table.items()]
    from explorer.research.defense import describe_defense
    md = (f"**Defense:** {describe_defense(defense)} · {len(harmful)} harmful prompts "
          f"attacked on the model and on the checkpoint · judge `{res.judge}`")
    util = result["utility"]
    if util:
        md += (f"\n\n**Utility cost** on {len(benign)} benign prompts: refusals "
               f"{pct(util['baseline_refusal_rate'])} → "
               f"{pct(util['routes'][0]['refusal_rate'])}, ΔLL "
               f"{util['ll_change']:+.3f} nats/token (the model's own answers)")
    if defense.info.get("hardened"):
        md += ("\n\nThe hardened checkpoint was trained on the project's own harmful "
               "prompts: attacking those is in-sample.")
    return (pr.defense_overview_figure(result), pd.DataFrame(rows, columns=DEFENSE_COLUMNS),
            md, defense.to_json(indent=2))


def defense_view(visit: Visit, derive_text: str, ids_text: str, defense_json: str,
                 attack_text: str, benign_text: str, attacks, samples, top, candidates,
                 max_iters, max_new, judge: str = "keyword", mode: str = "protect", b=None,
                 progress=gr.Progress()):
    """Derive a defense from evidence (RoSais + F-SOUR on ``derive_text`` prompts, library
    routes) or take ``defense_json``; measure each attack's ASR on ``attack_text`` without
    and with it, and its utility cost on ``benign_text``.
    Returns (figure, table, markdown, defense route JSON)."""
    from explorer.attacks import Shape, get_attack
    from explorer.defenses import Evidence, get_defense, list_defenses
    from explorer.research.defense import defense_params, gather_evidence
    moe = visit.moe
    modes = list_defenses("defend")
    if mode not in modes:
        fail(f"Unknown defense mode {str(mode)[:40]!r}: choose {', '.join(modes)}.")
    defense_cls = get_defense(mode)
    attacks = _attacks(attacks)
    derive = prompt_lines(visit, derive_text, "evidence prompts", required=False)
    routes = library_routes(library(visit, b), parse_ids(ids_text))
    harmful = prompt_lines(visit, attack_text, "harmful prompts to attack")
    benign = prompt_lines(visit, benign_text, "benign prompts", required=False)
    S = whole_number(samples, "RoSais masks per router", 1, 1024)
    L = whole_number(top, "RoSais top-L", 1, len(moe.moe_layers))
    N = whole_number(candidates, "F-SOUR candidates", 1, 256)
    It = whole_number(max_iters, "F-SOUR restarts", 1, 20)
    n, jd = generation_settings(visit, max_new, judge)
    needy = [a for a in attacks if get_attack(a).needs_routes]
    if needy and not routes:
        fail(f"The {needy[0]} attack needs library routes (type their ids).")
    if defense_cls.replaces_model:
        return _replaced_view(visit, defense_cls, harmful, benign, attacks, S, L, N, It, n, jd,
                              progress)
    given = _given_defense(moe, defense_json)
    if given is None and defense_cls.needs_evidence and not (derive or routes):
        fail("Give evidence (prompts to attack, or library route ids) or a defense route.")
    if given is not None or not defense_cls.needs_evidence:  # e.g. the self-reminder
        derive = []
    shape = Shape(prompt_tokens=prompt_tokens(visit, derive + harmful),
                  moe_layers=len(moe.moe_layers), max_new_tokens=n,
                  target_tokens=len(moe.target_ids(DEFAULT_TARGET)))

    def cost(name: str) -> int:  # one prompt: the attack's passes and its judged answer
        attack = get_attack(name)
        return attack.cost(defense_params(attack, top=L, samples=S, candidates=N,
                                          max_iters=It), shape) + n
    visit.budget(len(derive) * (cost("rosais") + cost("fsour"))
                 + sum(2 * len(harmful) * cost(a) for a in attacks)
                 + n * len(benign), "this defense evaluation")
    groups = attack_groups(attacks)
    steps = len(derive) + 1 + len(groups) + bool(benign)
    done = 0
    rosais_results: list = []
    for p in derive:
        r2, f2 = run_with_progress(progress, lambda p=p: gather_evidence(
            moe, [p], samples=S, candidates=N, max_iters=It, max_new_tokens=n, judge=jd),
            f"evidence: RoSais + F-SOUR on {p[:30]!r}", done / steps, (done + 1) / steps,
            3.0 + 3.0 * N * It)
        rosais_results += r2
        routes += f2
        done += 1
    applied = (defense_cls.in_force(moe, given) if given is not None else
               defense_cls.build(moe, defense_cls.Params(),
                                 evidence=Evidence(rosais_results, routes)))
    defense = applied.record
    done += 1
    if not defense.defends:
        fail("The evidence names no cell to forbid or router to protect: add evidence "
             f"prompts or routes (found {len(routes)} successful routes, "
             f"{len(rosais_results)} RoSais results).")
    table, out_attacks = {}, []
    for group in groups:
        res = run_with_progress(progress, lambda group=group: defense_cls.evaluate(
            moe, applied, harmful, None, attacks=group,
            routes=routes if any(get_attack(a).needs_routes for a in group) else (),
            rosais_top=L, samples=S, candidates=N, max_iters=It, max_new_tokens=n,
            judge=jd),
            f"attack {' and '.join(map(repr, group))} without and with the defense",
            done / steps, (done + 1) / steps,
            2 * len(harmful) * sum(cost(a) for a in group) / PASSES_PER_SECOND)
        table.update(res.table)
        out_attacks += res.attacks
        done += 1
    table = {a: table[a] for a in attacks if a in table}  # in the order asked
    util = None
    if benign:
        util = run_with_progress(progress, lambda: defense_cls.utility(
            moe, applied, benign, max_new_tokens=n, judge=jd),
            f"utility cost on {len(benign)} benign prompts", done / steps, 1.0,
            2.0 * len(benign)).to_dict()
    result = {"defense": defense.to_dict(), "prompts": harmful, "attacks": out_attacks,
              "table": table, "utility": util}
    rows = [[a, next((x["n"] for x in out_attacks if x["attack"] == a), 0),
             pct(t.get("before")), pct(t.get("after"))] for a, t in table.items()]
    insample = sorted(set(harmful) & (set(derive) | {r.info.get("prompt") for r in routes}))
    md = _summary(defense, routes, rosais_results, given, harmful, benign, jd, util, insample)
    return (pr.defense_overview_figure(result), pd.DataFrame(rows, columns=DEFENSE_COLUMNS),
            md, defense.to_json(indent=2))
