"""Prompts prepared once: :class:`Prompt` is a user message templated and tokenised for one
model, with the system prompt and thinking mode it was templated with.

:meth:`explorer.core.model.MoEModel.prepare` makes one (and remembers it, so preparing the
same text again costs a dictionary lookup); every library function that takes a prompt
(:func:`~explorer.core.trace.trace`, :func:`~explorer.methods.rosais.rosais`,
:func:`~explorer.methods.fsour.fsour`, the research measures, the attacks) takes a
:class:`Prompt` or plain text, so that a caller that checked a prompt's length, say, hands
the same token ids on instead of templating the text again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """A user message as one model sees it.

    ``text``: the user message; ``system``: the system prompt it was templated with (None:
    none); ``thinking``: the chat template's thinking mode it was rendered with (None: the
    template has no such switch); ``ids``: the templated token ids, chat template
    included (route positions index them); ``model``: the name of the model it was
    prepared for; ``info``: that model's provenance for this prompt (what routes and
    results record)."""

    text: str
    ids: tuple[int, ...]
    system: str | None = None
    thinking: bool | None = None
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_tokens(self) -> int:
        """The templated prompt's length in tokens (route positions lie below it)."""
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return {"text": self.text, "ids": list(self.ids), "system": self.system,
                "thinking": self.thinking, "model": self.model, "info": dict(self.info)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prompt":
        """The inverse of :meth:`to_dict`."""
        return cls(text=d["text"], ids=tuple(int(i) for i in d["ids"]), system=d.get("system"),
                   thinking=d.get("thinking"), model=d.get("model", ""),
                   info=dict(d.get("info") or {}))


def prompt_text(prompt: "str | Prompt") -> str:
    """The user message of ``prompt`` (text or :class:`Prompt`)."""
    return prompt.text if isinstance(prompt, Prompt) else prompt
