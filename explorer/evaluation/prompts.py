"""The project's own prompt sets, under their earlier name: their home is
:mod:`explorer.core.prompt_sets` (low in the layers, so that every method can use them)."""
from __future__ import annotations

from explorer.core.prompt_sets import BENIGN_PROMPTS, HARMFUL_PROMPTS

__all__ = ["BENIGN_PROMPTS", "HARMFUL_PROMPTS"]
