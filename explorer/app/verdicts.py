"""The badges beside an answer: the keyword judge's verdict and log P(target)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.prompt import Prompt
    from explorer.core.route import Route


def keyword_verdict(prompt: str, text: str):
    """The offline keyword judge's :class:`~explorer.judges.Verdict`."""
    from explorer.judges import get_judge
    return get_judge("keyword").judge(prompt, text)


def verdict_kind(prompt: str, text: str) -> str:
    """The keyword judge's verdict in one word: ``jailbroken``, ``refusal`` or ``empty``."""
    v = keyword_verdict(prompt, text)
    return "jailbroken" if v.jailbroken else ("refusal" if v.refusal else "empty")


def verdict_text(prompt: str, text: str) -> str:
    """:func:`verdict_kind` as the app words it."""
    kind = verdict_kind(prompt, text)
    return "jailbroken (no refusal)" if kind == "jailbroken" else kind


def answer_verdict(moe: MoEModel, prompt: str | Prompt, text: str, route: Route | None = None,
                   target: str | None = None, system: str | None = None) -> dict:
    """What the badges next to an answer show: the keyword judge's verdict on ``text`` and
    log P(``target`` | the prompt, templated with ``system`` unless it is prepared) under
    ``route`` (teacher-forced; default target: the search default, "Sure, here is"). One
    forward pass of prompt + target."""
    from explorer.core.defaults import DEFAULT_TARGET
    from explorer.core.forward import target_logprob
    from explorer.core.route import Route
    target = target or DEFAULT_TARGET
    p = moe.prepare(prompt, system)
    lp = float(target_logprob(moe, list(p.ids), moe.target_ids(target),
                              [route if route is not None else Route()])[0])
    return {"verdict": verdict_kind(p.text, text), "logprob": lp, "target": target}
