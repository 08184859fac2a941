"""Where a templated prompt's chat-template tokens are, and how a route's positions move to
another prompt: :func:`prompt_layout` (a :class:`Layout` of the prompt's leading and
trailing template tokens) and :func:`map_route`, whose mappings (:data:`MAPPINGS`) are

- ``end``: align positions from the end of the templated prompt (the assistant header and
  the last tokens line up);
- ``template``: keep only edits on chat-template tokens, moved to the same template token;
- ``absolute``: keep positions as they are.

Replaying a route on another prompt (transfer, the replay attack, defenses that change the
system prompt) goes through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from explorer.core.chat import check_system
from explorer.core.errors import InputError, RouteError
from explorer.core.route import Route, RouteEdit

if TYPE_CHECKING:
    from explorer.core.model import MoEModel

#: How :func:`map_route` moves positions onto another prompt (see the module docs).
MAPPINGS = ("end", "template", "absolute")


@dataclass
class Layout:
    """A templated prompt's length and its leading / trailing chat-template token counts."""

    num_tokens: int
    prefix: int
    suffix: int

    @property
    def content(self) -> range:
        return range(self.prefix, self.num_tokens - self.suffix)

    def is_template(self, position: int) -> bool:
        return position < self.prefix or position >= self.num_tokens - self.suffix


def prompt_layout(moe: MoEModel, prompt: str, system: str | None = None, *,
                  thinking: bool | None = None) -> Layout:
    """Where the chat template's own tokens are in ``moe.encode(prompt, system,
    thinking=thinking)`` (cached in the model's own
    :attr:`~explorer.core.model.MoEModel.cache`). A system prompt's tokens count as
    template tokens (they come before the prompt), and so does a thinking block."""
    mode = moe.resolve_thinking(thinking)

    def build() -> Layout:
        ids = moe.encode(prompt, system, thinking=thinking)
        return _layout_from_offsets(moe, prompt, ids, system, thinking) or \
            layout_from_probes(moe, ids, system, thinking=thinking)
    return moe.cache.memo(moe.cache.layouts, (check_system(system), prompt, mode), build,
                          limit=4096)


def _layout_from_offsets(moe: MoEModel, prompt: str, ids: list[int],
                         system: str | None = None,
                         thinking: bool | None = None) -> Layout | None:
    try:
        text = moe.template(prompt, system, thinking=thinking)
        system = check_system(system)
        after = 0 if system is None else max(0, text.find(system)) + len(system)
        start = text.find(prompt, after)
        if start < 0:
            return None
        end = start + len(prompt)
        enc = moe.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != list(ids):
            return None
        content = [a < end and b > start and b > a for a, b in enc["offset_mapping"]]
    except Exception:  # noqa: BLE001 - slow tokenizers have no offsets: use the fallback
        return None
    if not any(content):
        return None
    first = content.index(True)
    last = len(content) - 1 - content[::-1].index(True)
    return Layout(len(ids), first, len(ids) - 1 - last)


def layout_from_probes(moe: MoEModel, ids: list[int], system: str | None = None, *,
                       thinking: bool | None = None) -> Layout:
    """The layout of ``ids`` (a prompt templated with ``system`` and ``thinking``) from the
    tokens it shares at its start and end with two probe prompts templated the same way."""
    pre, suf = len(ids), len(ids)
    for probe in ("Hello there.", "What is 7?"):
        other = moe.encode(probe, system, thinking=thinking)
        n = 0
        while n < min(len(ids), len(other)) and ids[n] == other[n]:
            n += 1
        m = 0
        while m < min(len(ids), len(other)) - n and ids[-1 - m] == other[-1 - m]:
            m += 1
        pre, suf = min(pre, n), min(suf, m)
    suf = min(suf, len(ids) - pre)
    return Layout(len(ids), pre, suf)


def source_length(moe: MoEModel, route: Route) -> int:
    """The templated length of the prompt ``route`` was found on (with its own system
    prompt, ``info["system"]``)."""
    p = route.info.get("prompt")
    if isinstance(p, str) and p.strip():
        return len(moe.encode(p, route.system))
    n = route.info.get("prompt_tokens")
    if isinstance(n, int) and n > 0:
        return n
    raise RouteError("the route does not name its source prompt (info.prompt or "
                     "info.prompt_tokens): pass source_prompt")


def map_route(moe: MoEModel, route: Route, prompt: str, mapping: str = "end",
              source_prompt: str | None = None, system: str | None = None) -> Route:
    """``route`` moved onto ``prompt`` templated with ``system`` by ``mapping`` (see the
    module docs); the source prompt is templated with the route's own system prompt
    (``info["system"]``).

    The copy's ``info`` names the new ``prompt`` and its ``prompt_tokens``, the source
    (``mapped_from``), the ``mapping``, ``edits_dropped`` and the new ``system`` (the key
    is removed when there is none).
    """
    system = check_system(system)
    if mapping not in MAPPINGS:
        raise InputError(f"unknown mapping {mapping!r}; choose one of {list(MAPPINGS)}")
    src = source_prompt if source_prompt is not None else route.info.get("prompt")
    positional = any(e.position is not None for e in route.edits)
    tgt = prompt_layout(moe, prompt, system)
    info = dict(route.info)
    info.pop("system", None)
    info.pop("system_placement", None)
    if system is not None:
        info.update(system=system, system_placement=moe.system_placement)
    if (src == prompt and route.system == system) or not positional:
        info.update(prompt=prompt, prompt_tokens=tgt.num_tokens)
        info.setdefault("edits_dropped", 0)
        return Route(list(route.edits), info)
    if isinstance(src, str) and src.strip():
        slay: Layout | None = prompt_layout(moe, src, route.system)
        P = slay.num_tokens
    else:
        slay, P = None, source_length(moe, route)
    kept: list[RouteEdit] = []
    for e in route.edits:
        if e.position is None:
            kept.append(e)
            continue
        if not 0 <= e.position < P:
            continue
        back = P - e.position  # 1 = the last token
        if mapping == "end":
            new = tgt.num_tokens - back
        elif mapping == "absolute":
            new = e.position
        elif slay is not None and e.position < slay.prefix:
            new = e.position if e.position < tgt.prefix else -1
        elif slay is not None and e.position >= P - slay.suffix:
            new = tgt.num_tokens - back if back <= tgt.suffix else -1
        elif slay is None and back <= tgt.suffix:
            new = tgt.num_tokens - back
        else:
            new = -1
        if 0 <= new < tgt.num_tokens:
            kept.append(RouteEdit(e.layer, new, e.experts, e.mode))
    info.update(prompt=prompt, prompt_tokens=tgt.num_tokens, mapped_from=src,
                mapping=mapping, edits_dropped=len(route.edits) - len(kept))
    return Route(kept, info)
