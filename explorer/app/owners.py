"""Who owns what: searches (and, in hosted mode, saved routes) belong to an owner key derived
on the server from the caller's identity with a secret that never leaves the server.

Identities:

- a browser: a client id the server issued and signed (``<random>.<signature>``), kept in the
  browser's ``gr.BrowserState``. A claimed id without a valid signature is replaced by a
  fresh one that owns nothing, so planting another browser's (unsigned or guessed) id gains
  nothing;
- an API client: its Gradio session (``session_hash``). In hosted mode a call without one
  is refused at the gate; nobody shares the fallback identity "anonymous" there.

Two secrets live in the data folder: ``.browser_state_secret`` encrypts BrowserState
values in the browser (Gradio sends it to every page in ``/config``: it protects nothing on
its own), and ``.owner_secret`` signs client ids and derives owner keys (only this process
reads it; no response carries it or anything it is not hashed into). An owner key is stored
with the caller's jobs and routes and never shown; asking for a job one does not own gets
the same answer as an unknown id, so ids cannot be probed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

from explorer.core.errors import InputError
from explorer.storage.library import StoreError

#: The identity of local callers without a session (tests, scripts; refused when hosted).
LOCAL_SESSION = "anonymous"
#: Job ids a browser keeps in its BrowserState.
MAX_BROWSER_JOBS = 50
_CLIENT_RE = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{32}\Z")


def session_of(request: Any) -> str | None:
    """The Gradio session of a request (one browser tab or one API client), or None."""
    s = getattr(request, "session_hash", None)
    return str(s) if s else None


class Owners:
    """Owner keys and the checks that use them (``data_dir``: where the secrets live)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._root: bytes | None = None
        self._keys: dict[str, bytes] = {}

    # -- secrets ------------------------------------------------------------------------------
    def browser_secret(self) -> str:
        """The key Gradio encrypts BrowserState with (public: it is in ``/config``); kept in
        the data folder so a browser's state survives restarts."""
        return _secret(self.data_dir / ".browser_state_secret")

    def _key(self, purpose: str) -> bytes:
        """A key for ``purpose`` derived from the server-only secret."""
        if self._root is None:
            self._root = _secret(self.data_dir / ".owner_secret").encode()
        if purpose not in self._keys:
            self._keys[purpose] = hmac.new(self._root, purpose.encode(),
                                           hashlib.sha256).digest()
        return self._keys[purpose]

    # -- browsers -----------------------------------------------------------------------------
    def new_client(self) -> str:
        """A fresh signed client id."""
        token = secrets.token_hex(16)
        return f"{token}.{self._sign(token)}"

    def _sign(self, token: str) -> str:
        return hmac.new(self._key("client ids"), token.encode(), hashlib.sha256).hexdigest()[:32]

    def verified(self, client: Any) -> str | None:
        """``client`` if this server issued it (its signature holds), else None."""
        if not isinstance(client, str) or not _CLIENT_RE.match(client):
            return None
        token, sig = client.split(".")
        return client if hmac.compare_digest(sig, self._sign(token)) else None

    def ensure_client(self, b: Any) -> dict:
        """A BrowserState value with a client id this server signed (a missing, malformed
        or forged one is replaced by a fresh id that owns nothing) and at most
        :data:`MAX_BROWSER_JOBS` job ids."""
        b = dict(b) if isinstance(b, dict) else {}
        if self.verified(b.get("client")) is None:
            b["client"] = self.new_client()
        b["jobs"] = [j for j in (b.get("jobs") or []) if isinstance(j, str)
                     and len(j) <= 64][-MAX_BROWSER_JOBS:]
        return b

    # -- owner keys ---------------------------------------------------------------------------
    def owner(self, request: Any = None, client: str | None = None) -> str:
        """The owner key of a caller: an HMAC, with a key only this server knows, of the
        browser's signed client id (the UI) or of the Gradio session (API clients; local
        callers without one share :data:`LOCAL_SESSION`). A client id this server did not
        sign is refused."""
        if client:
            if self.verified(client) is None:
                raise InputError("this browser's id was not issued by this server; reload "
                                 "the page")
            ident = f"ui:{client}"
        else:
            ident = f"api:{session_of(request) or LOCAL_SESSION}"
        return "o:" + hmac.new(self._key("job owners"), ident.encode("utf-8"),
                               hashlib.sha256).hexdigest()[:32]

    def owned_job(self, store, job_id: Any, owner: str):
        """The stored job ``job_id`` if ``owner`` owns it; otherwise the same "no job"
        error as for an unknown id."""
        if not isinstance(job_id, str) or not re.fullmatch(r"[0-9a-f]{32}", job_id):
            raise StoreError("no job with that id")
        try:
            rec = store.get_job(job_id)
        except StoreError:
            rec = None
        if rec is None or not hmac.compare_digest(str(rec.session or ""), owner):
            raise StoreError("no job with that id")
        return rec


def _secret(p: Path) -> str:
    """The secret kept in ``p`` (made, readable by this user only, when missing); a folder
    that cannot hold it gives a secret for this process's life."""
    try:
        text = p.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    s = secrets.token_urlsafe(32)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(s)
    except OSError:
        pass
    return s
