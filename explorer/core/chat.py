"""System prompts as the library takes them: the one check of a system prompt and how it is
merged into the user message where a chat template has no system turn. Pure text (no torch),
so the CLI's option parsing and the evaluation layer can use it without loading a model
library; :meth:`explorer.core.model.MoEModel.template` applies it."""

from __future__ import annotations

from typing import Any

from explorer.core.defaults import MAX_SYSTEM_CHARS
from explorer.core.errors import InputError


def check_system(system: Any) -> str | None:
    """A system prompt as the library takes it: None for none (None, empty or blank
    text), else the text; ``InputError`` for anything but text, text longer than
    :data:`~explorer.core.defaults.MAX_SYSTEM_CHARS` or lone surrogates."""
    if system is None:
        return None
    if not isinstance(system, str):
        raise InputError(f"the system prompt must be text, got {type(system).__name__}")
    if not system.strip():
        return None
    if len(system) > MAX_SYSTEM_CHARS:
        raise InputError(f"the system prompt has {len(system)} characters; at most "
                         f"{MAX_SYSTEM_CHARS} are accepted")
    try:
        system.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the system prompt is not valid Unicode text (lone surrogates)") \
            from None
    return system


def merge_system(system: str, prompt: str) -> str:
    """The user turn of a template without a system role: the system prompt, a blank
    line, then the prompt."""
    return f"{system}\n\n{prompt}"
