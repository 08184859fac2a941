"""Hardening: repair the experts that routing attacks rely on, under the attacks' routes.

The project's own implementation of the idea of routing-aware safety alignment (RASA,
Liang et al. 2026: find the experts that successful jailbreaks use disproportionately,
fine-tune only those with the jailbreak's routing held fixed), in four steps:

1. **Attack routes** (:func:`gather_attack_routes`): on the project's own harmful prompts
   (:data:`~explorer.core.prompt_sets.HARMFUL_PROMPTS`; never a benchmark), F-SOUR routes
   (:func:`~explorer.methods.fsour.fsour_many`) and RoSais top-L masks
   (:func:`~explorer.methods.rosais.rosais`).
2. **Targets** (:func:`own_answers`): the model's own greedy answers, unattacked: its
   refusals of those harmful prompts (prompts it does not refuse are left out) and its
   answers to the benign prompts.
3. **Experts** (:func:`select_experts`): the prompt's and the refusal's tokens run through
   the model with and without each route, recording which experts each token used; the
   (layer, expert) pairs whose use grows most under the routes (summed over the pairs)
   are chosen, ``experts`` of them.
4. **Training** (:func:`harden`): only the chosen experts' rows of the fused expert weights
   (``gate_up_proj`` / ``down_proj``, or whatever 3-D weights the layer's experts module
   holds, indexed by expert first) learn: every other gradient is zeroed before each Adam
   step, so every other parameter keeps its bits. The loss is the mean per-token NLL of
   the refusal with the attack route in force (routing is held fixed by
   :class:`~explorer.core.control.RouteControl`; gradients flow through the masked router
   logits into the experts) plus ``benign_weight`` times the mean per-token NLL of the
   model's own benign answers without a route (the utility term). Full batch, seeded,
   deterministic on a CPU with a fixed thread count.
5. **Rounds** (``rounds``, default :data:`HARDEN_ROUNDS`): each round after the first
   searches F-SOUR and RoSais routes afresh against the model hardened so far (an adaptive
   attacker), adds the experts those routes use more and trains again on all routes.

The model passed in is never changed: training runs on a copy, returned as a new
:class:`~explorer.core.model.MoEModel` with a :class:`HardenResult` (JSON, provenance).
:func:`save_hardened` writes a checkpoint folder (``save_pretrained``, the tokenizer and
:data:`PROVENANCE_FILE`) that ``load_model`` / ``--model FOLDER`` load like any other.
:func:`evaluate_hardened` measures attacks against the original and the hardened model
and the hardened model's utility cost (benign refusal rate, log-likelihood change of the
original model's own benign answers); ``defend --mode hardened`` and the Research tab's
Defense view run it.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from explorer.core.defaults import (
    DEFAULT_TARGET,
    DEFAULT_THRESHOLD,
    HARDEN_BENIGN_WEIGHT,
    HARDEN_EXPERTS,
    HARDEN_LR,
    HARDEN_ROUNDS,
    HARDEN_STEPS,
    RESEARCH_MAX_NEW_TOKENS,
)
from explorer.core.errors import InputError
from explorer.core.forward import generate
from explorer.core.paths import ASSETS_DIR
from explorer.core.route import Route
from explorer.research.common import ResultMixin, as_route, judge_name, prompt_list, resolve_judge

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

#: The provenance file a hardened checkpoint folder holds (a :class:`HardenResult` JSON).
PROVENANCE_FILE = "harden.json"
#: The bundled hardened demo model (built by ``python -m explorer harden --out`` it).
DEMO_HARDENED_DIR = ASSETS_DIR / "demo-hardened"


@dataclass
class HardenResult(ResultMixin):
    """What :func:`harden` did (see the module docs).

    ``experts``: the chosen (layer, expert) pairs, each with ``attacked`` / ``plain`` token
    counts (uses with and without the routes) and ``increase``. ``pairs``: the training
    pairs, each ``prompt``, ``route`` (JSON), ``method`` and the refusal log-prob per token
    ``before`` / ``after``. ``targets``: prompt -> the refusal text trained on.
    ``losses``: per step ``loss``, ``refusal_nll``, ``benign_nll`` (the losses before that
    step's update). ``benign``: per benign prompt its answer's mean log-likelihood per
    token before and after. ``changed``: the parameter names whose rows were trained.
    """

    experts: list[dict]
    pairs: list[dict]
    targets: dict
    benign: list[dict]
    losses: list[dict]
    changed: list[str]
    refusal_lp_before: float
    refusal_lp_after: float
    benign_ll_before: float
    benign_ll_after: float
    ll_change: float
    seconds: float
    judge: str
    info: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        first, last = self.losses[0]["loss"], self.losses[-1]["loss"]
        cells = ", ".join(f"L{e['layer']}E{e['expert']}" for e in self.experts)
        return [f"trained {len(self.experts)} experts ({cells}) on {len(self.pairs)} "
                f"(prompt, attack route) pairs, {len(self.losses)} steps: loss "
                f"{first:.3f} -> {last:.3f}",
                f"refusal log-prob per token under the attack routes "
                f"{self.refusal_lp_before:.3f} -> {self.refusal_lp_after:.3f}",
                f"benign answers' log-likelihood per token {self.benign_ll_before:.3f} -> "
                f"{self.benign_ll_after:.3f} (ΔLL {self.ll_change:+.4f})"]


# -- 1. attack routes ----------------------------------------------------------------------
def gather_attack_routes(moe: MoEModel, prompts: Sequence[str], *, candidates: int = 4,
                         max_iters: int = 1, samples: int = 8, top: int = 2, seed: int = 0,
                         target: str = DEFAULT_TARGET, threshold: float = DEFAULT_THRESHOLD,
                         max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS, judge=None,
                         methods: Sequence[str] = ("fsour", "rosais")) -> list[Route]:
    """Attack routes on ``prompts``: F-SOUR's route (its best attempt, successful or not)
    and RoSais's top-``top`` masks per prompt; each route's ``info`` names its ``prompt``,
    ``method`` and ``success``. Routes without edits are left out."""
    from explorer.methods.fsour import fsour_many
    from explorer.methods.rosais import rosais
    bad = [m for m in methods if m not in ("fsour", "rosais")]
    if bad:
        raise InputError(f"unknown attack {bad[0]!r} for hardening; choose fsour, rosais")
    prompts = prompt_list(prompts)
    judge = resolve_judge(judge)
    out: list[Route] = []
    if "fsour" in methods:
        for res in fsour_many(moe, prompts, target, candidates=candidates, threshold=threshold,
                              max_iters=max_iters, seed=seed, judge=judge,
                              max_new_tokens=max_new_tokens):
            r = as_route(res)
            r.info["method"] = "fsour"
            out.append(r)
    if "rosais" in methods:
        for p in prompts:
            res = rosais(moe, p, samples=samples, seed=seed, top=top,
                         max_new_tokens=max_new_tokens, judge=judge)
            r = res.route_for(top)
            r.info.update(prompt=p, success=res.jailbroken)
            out.append(r)
    return [r for r in out if len(r)]


# -- 2. targets ----------------------------------------------------------------------------
def own_answers(moe: MoEModel, prompts: Sequence[str], *, refusals_only: bool = False,
                max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS, judge=None) -> dict[str, list[int]]:
    """The model's own greedy answer (token ids) to each prompt, unattacked; with
    ``refusals_only`` only the answers the judge calls refusals. Empty answers are left
    out."""
    judge = resolve_judge(judge)
    out = {}
    for p in prompt_list(prompts):
        gen = generate(moe, moe.encode(p), None, max_new_tokens=max_new_tokens)
        ans = gen.ids[gen.prompt_len:]
        if ans and (not refusals_only or judge.judge(p, gen.text).refusal):
            out[p] = ans
    return out


# -- batched teacher forcing ---------------------------------------------------------------
def _batch(moe: MoEModel, items: list[tuple[list[int], list[int]]]):
    """Right-padded ids, attention mask and answer-token mask for (prompt ids, answer ids)
    pairs: positions keep their indices, so routes apply unchanged."""
    seqs = [p + a for p, a in items]
    T = max(map(len, seqs))
    pad = moe.tokenizer.pad_token_id if moe.tokenizer is not None else None
    pad = 0 if pad is None else pad
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    att = torch.zeros(len(seqs), T, dtype=torch.long)
    ans = torch.zeros(len(seqs), T, dtype=torch.bool)  # where the NEXT token is an answer's
    for b, ((p, a), s) in enumerate(zip(items, seqs)):
        ids[b, :len(s)] = torch.tensor(s)
        att[b, :len(s)] = 1
        ans[b, len(p) - 1:len(s) - 1] = True
    return ids.to(moe.device), att.to(moe.device), ans.to(moe.device)


def _mean_token_lp(moe: MoEModel, items, routes) -> torch.Tensor:
    """Mean log-prob per answer token (B,) of each (prompt ids, answer ids) pair, each row
    with its route (None: no route); differentiable (call under ``torch.no_grad`` to
    measure)."""
    ids, att, ans = _batch(moe, items)
    with moe.control(routes):
        logits = moe.model(input_ids=ids, attention_mask=att, use_cache=False).logits
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    m = ans[:, :-1].float()
    return (tok * m).sum(-1) / m.sum(-1)


# -- 3. experts ----------------------------------------------------------------------------
def expert_usage(moe: MoEModel, items, routes) -> dict[tuple[int, int], int]:
    """(layer, expert) -> tokens routed to it over every (prompt ids, answer ids) pair (pad
    tokens excluded), each pair with its route (None: none)."""
    counts: dict[tuple[int, int], int] = {}
    for (p, a), r in zip(items, routes):
        ids = torch.tensor([p + a], device=moe.device)
        with torch.no_grad(), moe.control(r, record=True) as ctl:
            moe.model(input_ids=ids, use_cache=False)
        for lay in moe.moe_layers:
            ex = ctl.collected(lay)["experts"].reshape(-1).tolist()
            for e in ex:
                counts[(lay, e)] = counts.get((lay, e), 0) + 1
    return counts


def select_experts(moe: MoEModel, items, routes, count: int = HARDEN_EXPERTS) -> list[dict]:
    """The ``count`` (layer, expert) pairs whose use grows most under ``routes`` (see the
    module docs): ranked by the increase, then by uses under the routes, then layer and
    expert; only pairs used more under the routes are taken."""
    attacked = expert_usage(moe, items, routes)
    plain = expert_usage(moe, items, [None] * len(items))
    cells = set(attacked) | set(plain)
    rows = [{"layer": lay, "expert": e, "attacked": attacked.get((lay, e), 0),
             "plain": plain.get((lay, e), 0),
             "increase": attacked.get((lay, e), 0) - plain.get((lay, e), 0)}
            for lay, e in cells]
    rows = [r for r in rows if r["increase"] > 0]
    rows.sort(key=lambda r: (-r["increase"], -r["attacked"], r["layer"], r["expert"]))
    return sorted(rows[:count], key=lambda r: (r["layer"], r["expert"]))


def expert_weights(moe: MoEModel, layer: int) -> dict[str, torch.nn.Parameter]:
    """The fused expert weights of an MoE layer (3-D parameters indexed by expert first),
    by their full parameter name in ``moe.model``."""
    h = moe.handle(layer)
    if h.experts is None:
        raise InputError(f"layer {layer}'s experts are not a fused module: cannot harden")
    E = h.info.num_experts
    names = {id(p): n for n, p in moe.model.named_parameters()}
    out = {names[id(p)]: p for p in h.experts.parameters()
           if p.dim() == 3 and p.shape[0] == E and id(p) in names}
    if not out:
        raise InputError(f"layer {layer} holds no fused expert weights: cannot harden")
    return out


# -- 4. training ---------------------------------------------------------------------------
def harden(moe: MoEModel, prompts: Sequence[str] | None = None,
           benign_prompts: Sequence[str] | None = None, routes: Sequence | None = None, *,
           steps: int = HARDEN_STEPS, lr: float = HARDEN_LR, experts: int = HARDEN_EXPERTS,
           benign_weight: float = HARDEN_BENIGN_WEIGHT, seed: int = 0,
           candidates: int = 4, max_iters: int = 1, samples: int = 8, top: int = 2,
           max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS, judge=None,
           targets: Mapping[str, str] | None = None, rounds: int = HARDEN_ROUNDS,
           on_step=None) -> tuple[MoEModel, HardenResult]:
    """Harden ``moe`` against routing attacks (see the module docs); returns the hardened
    copy and a :class:`HardenResult`. ``moe`` itself is not changed.

    ``prompts``: harmful prompts (default: the project's own); ``benign_prompts``: the
    utility set (default: the project's own). ``routes``: attack routes (Routes, route
    JSON or search results, each with ``info["prompt"]``) instead of running F-SOUR
    (``candidates``, ``max_iters``) and RoSais (``samples``, ``top``) on the ``prompts``
    the model refuses.
    ``experts``: how many (layer, expert) pairs learn. ``targets``: prompt -> the refusal
    text to train on, instead of the model's own refusals (for a model that refuses
    nothing yet, such as a random one). ``rounds``: after the first round of ``steps``,
    each further round searches F-SOUR and RoSais routes afresh against the model hardened
    so far (seed ``seed + round``), adds the experts those routes use more (``experts``
    more at most) and trains again on all routes so far. ``on_step(step, losses)``:
    progress.
    """
    from explorer.core.model import MoEModel
    from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS
    if steps < 1 or experts < 1 or rounds < 1 or lr <= 0 or benign_weight < 0:
        raise InputError("steps, experts and rounds must be >= 1, lr > 0, "
                         "benign_weight >= 0")
    t0 = time.perf_counter()
    judge = resolve_judge(judge)
    prompts = prompt_list(prompts if prompts is not None else HARMFUL_PROMPTS)
    benign = prompt_list(benign_prompts if benign_prompts is not None else BENIGN_PROMPTS)
    with torch.no_grad():
        refusals = ({p: moe.target_ids(t) for p, t in targets.items()}
                    if targets is not None else
                    own_answers(moe, prompts, refusals_only=True,
                                max_new_tokens=max_new_tokens, judge=judge))
        if not refusals:
            raise InputError("the model refuses none of the harmful prompts unattacked: "
                             "nothing to harden (harden() takes refusal texts as targets)")
        if routes is None:  # only where the model refuses: the attacks' work to undo
            routes = gather_attack_routes(moe, [p for p in prompts if p in refusals],
                                          candidates=candidates, max_iters=max_iters,
                                          samples=samples, top=top, seed=seed,
                                          max_new_tokens=max_new_tokens, judge=judge)
        routes = [as_route(r) for r in routes]
        answers = own_answers(moe, benign, max_new_tokens=max_new_tokens, judge=judge)
    pairs = [(r.info.get("prompt"), r) for r in routes if r.info.get("prompt") in refusals]
    if not pairs:
        raise InputError("no attack route on a prompt the model refuses unattacked: nothing "
                         "to harden against")
    if not answers:
        raise InputError("the model gave no answer to the benign prompts")
    bitems = [(moe.encode(p), a) for p, a in answers.items()]
    work = MoEModel(copy.deepcopy(moe.model), moe.tokenizer, f"{moe.name} (hardened)",
                    max_prompt_tokens=moe.prompt_cap)
    for p in work.model.parameters():
        p.requires_grad_(False)
    chosen: list[dict] = []
    masks: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    losses: list[dict] = []
    refused = list(dict.fromkeys(p for p, _ in pairs))
    for rnd in range(rounds):
        if rnd:  # a fresh search against the model hardened so far (an adaptive attacker)
            with torch.no_grad():
                new = gather_attack_routes(work, refused, candidates=candidates,
                                           max_iters=max_iters, samples=samples, top=top,
                                           seed=seed + rnd, max_new_tokens=max_new_tokens,
                                           judge=judge)
            new_pairs = [(r.info.get("prompt"), r) for r in new]
            for _, r in new_pairs:
                r.info["round"] = rnd
        else:
            new_pairs = pairs
        pairs = pairs + new_pairs if rnd else pairs
        n_items = [(moe.encode(p), refusals[p]) for p, _ in new_pairs]
        picked = select_experts(work, n_items, [r for _, r in new_pairs], experts) \
            if new_pairs else []
        for c in picked:
            if (c["layer"], c["expert"]) not in {(x["layer"], x["expert"]) for x in chosen}:
                chosen.append(dict(c, round=rnd))
        if not chosen:
            raise InputError("the attack routes use no expert more than the model does: "
                             "nothing to harden")
        for c in chosen:
            for name, w in expert_weights(work, c["layer"]).items():
                if name not in masks:
                    masks[name] = (w, torch.zeros(w.shape[0], dtype=torch.bool,
                                                  device=w.device))
                masks[name][1][c["expert"]] = True
        items = [(moe.encode(p), refusals[p]) for p, _ in pairs]
        proutes = [r for _, r in pairs]
        losses += _train(work, masks, items, proutes, bitems, steps=steps, lr=lr,
                         benign_weight=benign_weight, seed=seed + rnd, round_=rnd,
                         on_step=on_step)
    chosen.sort(key=lambda c: (c["layer"], c["expert"]))
    with torch.no_grad():
        lp_before = _mean_token_lp(moe, items, proutes).tolist()
        ll_before = _mean_token_lp(moe, bitems, None).tolist()
        lp_after = _mean_token_lp(work, items, proutes).tolist()
        ll_after = _mean_token_lp(work, bitems, None).tolist()
    n_b = len(bitems)
    result = HardenResult(
        experts=chosen,
        pairs=[{"prompt": p, "method": r.info.get("method"), "success": r.info.get("success"),
                "route": r.to_dict(), "before": b, "after": a}
               for (p, r), b, a in zip(pairs, lp_before, lp_after)],
        targets={p: moe.decode(refusals[p]) for p in dict.fromkeys(p for p, _ in pairs)},
        benign=[{"prompt": p, "answer": moe.decode(a), "before": b, "after": x}
                for (p, a), b, x in zip(answers.items(), ll_before, ll_after)],
        losses=losses, changed=sorted(masks),
        refusal_lp_before=sum(lp_before) / len(lp_before),
        refusal_lp_after=sum(lp_after) / len(lp_after),
        benign_ll_before=sum(ll_before) / n_b, benign_ll_after=sum(ll_after) / n_b,
        ll_change=(sum(ll_after) - sum(ll_before)) / n_b,
        seconds=round(time.perf_counter() - t0, 3), judge=judge_name(judge),
        info=dict(moe.provenance(), method="harden", seed=seed,
                  settings={"steps": steps, "lr": lr, "experts": experts,
                            "benign_weight": benign_weight, "candidates": candidates,
                            "max_iters": max_iters, "samples": samples, "top": top,
                            "max_new_tokens": max_new_tokens, "optimizer": "adam",
                            "given_targets": targets is not None,
                            "rounds": rounds, "threads": torch.get_num_threads()},
                  harmful_prompts=prompts, benign_prompts=benign))
    return work, result


def _train(work: MoEModel, masks: dict, items, routes, bitems, *, steps: int, lr: float,
           benign_weight: float, seed: int, round_: int, on_step=None) -> list[dict]:
    """``steps`` full-batch Adam steps on ``work``'s expert weights in ``masks`` (name ->
    (parameter, rows that learn)); the loss of the module docs. Returns the per-step
    losses (taken before each update)."""
    params = [w for w, _ in masks.values()]
    for w in params:
        w.requires_grad_(True)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    out = []
    try:
        for step in range(steps):
            opt.zero_grad(set_to_none=False)
            with torch.enable_grad():
                refusal_nll = -_mean_token_lp(work, items, routes).mean()
                benign_nll = -_mean_token_lp(work, bitems, None).mean()
                loss = refusal_nll + benign_weight * benign_nll
                loss.backward()
            for w, keep in masks.values():  # only the chosen experts' rows learn
                w.grad[~keep] = 0
            opt.step()
            rec = {"round": round_, "step": step, "loss": loss.item(),
                   "refusal_nll": refusal_nll.item(), "benign_nll": benign_nll.item()}
            out.append(rec)
            if on_step is not None:
                on_step(step, rec)
    finally:
        for w in params:
            w.requires_grad_(False)
            w.grad = None
    return out


# -- checkpoints ---------------------------------------------------------------------------
def save_hardened(hardened: MoEModel, result: HardenResult, folder: str | Path,
                  dtype: str | torch.dtype | None = None) -> Path:
    """Write ``hardened`` as a checkpoint folder: ``save_pretrained`` (in ``dtype``, e.g.
    the source checkpoint's ``"bfloat16"``; default: as loaded), the tokenizer and
    :data:`PROVENANCE_FILE` (``result``'s JSON). Returns the folder."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    model = hardened.model
    if dtype is not None:
        dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dt, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}")
        model = copy.deepcopy(model).to(dt)
    model.save_pretrained(folder)
    if hardened.tokenizer is not None:
        hardened.tokenizer.save_pretrained(folder)
    (folder / PROVENANCE_FILE).write_text(result.to_json(indent=1) + "\n", encoding="utf-8")
    return folder


def load_provenance(folder: str | Path) -> HardenResult | None:
    """The :class:`HardenResult` a hardened checkpoint folder records, or None."""
    f = Path(folder).expanduser() / PROVENANCE_FILE
    return HardenResult.from_json(f.read_text(encoding="utf-8")) if f.is_file() else None


def checkpoint_dtype(moe: MoEModel) -> str | None:
    """The dtype the model's checkpoint folder stores (its config.json), or None."""
    src = Path(str(getattr(moe.model.config, "_name_or_path", "") or ""))
    cfg = src / "config.json"
    if not cfg.is_file():
        return None
    d = json.loads(cfg.read_text(encoding="utf-8"))
    dt = d.get("dtype") or d.get("torch_dtype")
    return dt if isinstance(dt, str) else None


def hardened_path(moe: MoEModel, given: str | Path | None = None) -> Path:
    """The hardened checkpoint to evaluate for ``moe``: ``given``, else the bundled one
    (:data:`DEMO_HARDENED_DIR`) for the demo model; ``InputError`` otherwise."""
    if given is not None:
        p = Path(given).expanduser()
    elif moe.name == "demo":
        p = DEMO_HARDENED_DIR
    else:
        raise InputError(f"no hardened checkpoint is bundled for {moe.name}: build one with "
                         "`python -m explorer harden --out FOLDER` and pass it")
    if not (p / "config.json").is_file():
        raise InputError(f"{p} is not a hardened checkpoint folder (no config.json); build "
                         "one with `python -m explorer harden --out FOLDER`")
    return p


# -- evaluation ----------------------------------------------------------------------------
def hardened_defense(path: str | Path, provenance: HardenResult | None = None) -> Route:
    """The defense record of a hardened checkpoint: a route without edits whose ``info``
    names the checkpoint (``hardened``) and the experts it trained."""
    prov = provenance if provenance is not None else load_provenance(path)
    return Route(info={"method": "defense", "settings": {"mode": "hardened"},
                       "hardened": str(path),
                       "hardened_experts": [[e["layer"], e["expert"]] for e in prov.experts]
                       if prov is not None else None})


def model_utility(moe: MoEModel, hardened: MoEModel, benign_prompts: Sequence[str], *,
                  max_new_tokens: int = RESEARCH_MAX_NEW_TOKENS, judge=None,
                  label: str = "hardened"):
    """The utility cost of replacing ``moe`` by ``hardened``, as a
    :class:`~explorer.research.utility.UtilityResult` with one entry (an empty route):
    benign refusal rates of each model's greedy answers, and the mean log-likelihood per
    token of ``moe``'s own answers under each model (``ll_change``: hardened minus
    original)."""
    from explorer.research.utility import UtilityResult
    judge = resolve_judge(judge)
    prompts = prompt_list(benign_prompts)
    t0 = time.perf_counter()
    base, rows = [], []
    for p in prompts:
        ids = moe.encode(p)
        g0 = generate(moe, ids, None, max_new_tokens=max_new_tokens)
        g1 = generate(hardened, hardened.encode(p), None, max_new_tokens=max_new_tokens)
        ans = g0.ids[g0.prompt_len:]
        if ans:
            with torch.no_grad():
                ll0 = float(_mean_token_lp(moe, [(ids, ans)], None)[0])
                ll1 = float(_mean_token_lp(hardened, [(ids, ans)], None)[0])
        else:
            ll0 = ll1 = 0.0
        base.append({"completion": g0.text, "refusal": bool(judge.judge(p, g0.text).refusal),
                     "answer_tokens": len(ans), "mean_ll": ll0})
        rows.append({"refusal": bool(judge.judge(p, g1.text).refusal), "completion": g1.text,
                     "mean_ll": ll1, "delta_ll": ll1 - ll0, "edits_kept": 0})
    n = len(prompts)
    scored = [i for i, b in enumerate(base) if b["answer_tokens"]] or list(range(n))
    b_rate = sum(b["refusal"] for b in base) / n
    rate = sum(r["refusal"] for r in rows) / n
    b_ll = sum(base[i]["mean_ll"] for i in scored) / len(scored)
    ll = sum(rows[i]["mean_ll"] for i in scored) / len(scored)
    entry = {"label": label, "route": Route().to_dict(), "refusal_rate": rate,
             "refusal_change": rate - b_rate, "mean_ll": ll, "ll_change": ll - b_ll,
             "asr": None, "rows": rows}
    return UtilityResult(prompts=prompts, baseline=base, routes=[entry],
                         baseline_refusal_rate=b_rate, baseline_mean_ll=b_ll,
                         refusal_change=rate - b_rate, ll_change=ll - b_ll, mapping="none",
                         judge=judge_name(judge),
                         info=dict(moe.provenance(), max_new_tokens=max_new_tokens,
                                   hardened=hardened.name,
                                   seconds=round(time.perf_counter() - t0, 3)))


def evaluate_hardened(moe: MoEModel, hardened: MoEModel, harmful_prompts: Sequence[str],
                      benign_prompts: Sequence[str] | None = None, *, defense: Route | None = None,
                      before: bool = True, **kwargs):
    """:func:`~explorer.research.defense.evaluate_defense` with the hardened model as the
    defense: each attack runs against ``moe`` ("before") and against ``hardened``
    ("after"), searched afresh on each (an adaptive attacker); with ``benign_prompts`` the
    utility cost of :func:`model_utility`. ``kwargs``: :func:`evaluate_defense`'s settings
    (attacks, routes, judge, seed, budgets, params; not ``system``). ``defense``: the
    record to report (default :func:`hardened_defense` of ``hardened``'s name)."""
    from explorer.research.defense import DefenseResult, evaluate_defense
    if kwargs.get("system") is not None:
        raise InputError("the hardened defense is evaluated without a system prompt")
    kwargs.pop("system", None)
    judge = resolve_judge(kwargs.pop("judge", None))
    t0 = time.perf_counter()
    runs = ([("before", moe)] if before else []) + [("after", hardened)]
    attacks, table, res = [], {}, None
    for phase, model in runs:
        res = evaluate_defense(model, Route(), harmful_prompts, None, before=False,
                               judge=judge, **kwargs)
        for a in res.attacks:
            attacks.append(dict(a, phase=phase))
        for name, t in res.table.items():
            table.setdefault(name, {"before": None, "after": None})[phase] = t["after"]
    util = (model_utility(moe, hardened, benign_prompts, judge=judge,
                          max_new_tokens=kwargs.get("max_new_tokens", RESEARCH_MAX_NEW_TOKENS))
            .to_dict() if benign_prompts else None)
    defense = defense if defense is not None else hardened_defense(hardened.name)
    return DefenseResult(defense=defense.to_dict(), prompts=res.prompts, attacks=attacks,
                         table=table, utility=util, judge=judge_name(judge),
                         seconds=round(time.perf_counter() - t0, 3),
                         info=dict(res.info, hardened=hardened.name, before_model=moe.name))
