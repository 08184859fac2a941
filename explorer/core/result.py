"""JSON round trips for result dataclasses (their one home: every layer's results use it)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any


class ResultMixin:
    """``to_dict`` / ``to_json`` / ``from_dict`` / ``from_json`` for JSON-ready dataclasses.

    Fields hold only JSON types (lists, dicts with string keys, numbers, strings, None), so
    ``from_dict(to_dict(x)) == x`` and the JSON form is the CLI's ``--json`` object.
    """

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


__all__ = ["ResultMixin"]
