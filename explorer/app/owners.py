"""Who owns what: background searches belong to an owner key derived on the server from the
caller's identity (a browser's client id, or an API client's Gradio session) with a secret
kept in the data folder. The key is stored with the caller's jobs and never sent to
anyone; asking for a job one does not own gets the same answer as an unknown id, so ids
cannot be probed."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

from explorer.storage.library import StoreError


def session_of(request: Any, fallback: str = "anonymous") -> str:
    """The Gradio session of a request (one browser tab or one API client)."""
    return str(getattr(request, "session_hash", None) or fallback)


class Owners:
    """Owner keys and the checks that use them (``data_dir``: where the secret lives)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._secret: bytes | None = None

    def owner(self, request: Any = None, client: str | None = None) -> str:
        """The owner key of a caller: an HMAC, with a secret only this server knows, of the
        browser's client id (the UI; kept in its signed BrowserState) or of the Gradio
        session (API clients). It is stored with the caller's jobs and never shown."""
        ident = f"ui:{client}" if client else f"api:{session_of(request, 'anonymous')}"
        return "o:" + hmac.new(self._owner_secret(), ident.encode("utf-8"),
                               hashlib.sha256).hexdigest()[:32]

    def _owner_secret(self) -> bytes:
        if self._secret is None:
            self._secret = hmac.new(self.browser_secret().encode(), b"job owners",
                                    hashlib.sha256).digest()
        return self._secret

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

    def browser_secret(self) -> str:
        """A secret kept in the data folder, so BrowserState survives app restarts."""
        p = self.data_dir / ".browser_state_secret"
        try:
            return p.read_text().strip() or _new_secret(p)
        except OSError:
            return _new_secret(p)


def _new_secret(p: Path) -> str:
    s = secrets.token_urlsafe(24)
    try:
        p.write_text(s)
        os.chmod(p, 0o600)
    except OSError:
        pass
    return s
