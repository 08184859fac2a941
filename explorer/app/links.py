"""Shareable links to what the app shows: ``?route=ID`` (a saved route, replayed in the
Route library), ``?job=ID`` (a search, in the Search tab; only for the browser that owns it,
as every job view), ``?prompt=...&edits=...`` (a prompt and an unsaved route, re-run in
Inspect; ``&system=...`` adds the system prompt it was made with). The edits travel as
zlib-compressed, base64url-encoded route JSON. ``present=1`` (alone or with any of them)
opens the page in presenter mode."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from explorer.core.defaults import MAX_ROUTE_EDITS
from explorer.core.errors import InputError

#: The longest query value a link may carry (an encoded route of a few hundred edits).
MAX_LINK_CHARS = 16_000
#: The most a link's route may inflate to: :data:`MAX_ROUTE_EDITS` edits of at most
#: :data:`EDIT_JSON_BYTES` bytes each (a bigger one is refused while it is being
#: decompressed, not after).
EDIT_JSON_BYTES = 96
MAX_LINK_JSON_BYTES = MAX_ROUTE_EDITS * EDIT_JSON_BYTES


class LinkError(InputError):
    """A link that cannot be opened (one line, for a toast)."""


def page_base(request: Any) -> str:
    """The page's own address without its query (from the browser's Referer header), or
    "" (then links are relative: ``?route=3``)."""
    headers = getattr(request, "headers", None) or {}
    try:
        ref = headers.get("referer") or ""
    except AttributeError:
        ref = ""
    parts = urlsplit(ref)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


def encode_edits(edits: list[dict]) -> str:
    raw = json.dumps({"edits": list(edits)}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii").rstrip("=")


def decode_edits(text: str) -> list[dict]:
    if len(text) > MAX_LINK_CHARS:
        raise LinkError("the link's route is too long")
    try:
        packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        inflate = zlib.decompressobj()
        raw = inflate.decompress(packed, MAX_LINK_JSON_BYTES)  # a hard limit on the output
        big = bool(inflate.unconsumed_tail)
    except Exception:  # noqa: BLE001 - any malformed link gets the same answer
        raise LinkError("the link's route is damaged (copy the link again)") from None
    if big:
        raise LinkError(f"the link's route is too big (more than {MAX_LINK_JSON_BYTES:,} "
                        "bytes of edits)")
    try:
        edits = json.loads(raw.decode("utf-8"))["edits"]
    except Exception:  # noqa: BLE001 - any malformed link gets the same answer
        raise LinkError("the link's route is damaged (copy the link again)") from None
    if not isinstance(edits, list):
        raise LinkError("the link's route is damaged (copy the link again)")
    return edits


def _tokens(n: int | None) -> dict[str, int]:
    return {} if n is None else {"n": int(n)}


def route_link(base: str, route_id: int, n: int | None = None) -> str:
    """A saved route (``n``: the answer length it was shown with)."""
    return f"{base}?{urlencode({'route': int(route_id), **_tokens(n)})}"


def edits_link(base: str, prompt: str, edits: list[dict], n: int | None = None,
               system: str | None = None) -> str:
    """A prompt (with its ``system`` prompt, if any) and an unsaved route."""
    q = {"prompt": prompt, **({"system": system} if system else {}),
         "edits": encode_edits(edits), **_tokens(n)}
    return f"{base}?{urlencode(q)}"


def parse_link(query: Mapping[str, str] | None) -> dict[str, Any]:
    """What a page address asks to open: ``{"route": id}``, ``{"job": id}``,
    ``{"prompt": ..., "edits": [...]}`` (with ``"system"`` when the link has one) or ``{}``,
    each with ``"present"`` when the address sets presenter mode (``present=0|1``);
    :class:`LinkError` when it is malformed."""
    q = dict(query or {})
    extra: dict[str, Any] = {}
    mode: dict[str, Any] = {}
    if "present" in q:
        v = str(q["present"]).strip()
        if v not in ("0", "1"):
            raise LinkError(f"the link's presenter mode must be 0 or 1, got {v[:20]!r}")
        mode["present"] = v == "1"
    if "n" in q:
        v = str(q["n"]).strip()
        if not v.isdigit() or len(v) > 5:
            raise LinkError(f"the link's answer length must be a whole number, got {v[:20]!r}")
        extra["n"] = int(v)
    if "route" in q:
        v = str(q["route"]).strip()
        if not v.isdigit() or len(v) > 18:
            raise LinkError(f"the link's route id must be a whole number, got {v[:20]!r}")
        return {"route": int(v), **extra, **mode}
    if "job" in q:
        v = str(q["job"]).strip()
        if len(v) > 64:
            raise LinkError("the link's search id is too long")
        return {"job": v, **mode}
    if "edits" in q:
        prompt = str(q.get("prompt") or "")
        if len(prompt) > MAX_LINK_CHARS:
            raise LinkError("the link's prompt is too long")
        system = q.get("system")
        if system is not None:
            if len(str(system)) > MAX_LINK_CHARS:
                raise LinkError("the link's system prompt is too long")
            extra["system"] = str(system)
        return {"prompt": prompt, "edits": decode_edits(str(q["edits"])), **extra, **mode}
    return mode
