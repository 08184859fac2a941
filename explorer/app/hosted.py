"""Hosted mode: the limits a public server (e.g. a Hugging Face Space) puts on its users.

A :class:`HostedPolicy` is built from the environment (and flags) with
:meth:`HostedPolicy.from_env`; the app calls its checks before any model work. Every
check raises :class:`PolicyError` (a ``ValueError``) with a message fit to show a user.
With hosted mode off every check passes (apart from malformed values) and
:meth:`~HostedPolicy.redact` returns text unchanged, so callers need no branches.

Environment (flags passed to :meth:`~HostedPolicy.from_env` win):

=====================================  ==================================================
``EXPLORER_HOSTED=1``                  turn hosted mode on
``EXPLORER_MODEL_ALLOWLIST``           comma-separated hub ids users may load (the demo
                                       model is always allowed; local paths never are)
``EXPLORER_HOSTED_MAX_PROMPT_TOKENS``  prompt cap in tokens (default
                                       ``$EXPLORER_MAX_PROMPT_TOKENS``, else 256)
``EXPLORER_HOSTED_MAX_NEW_TOKENS``     generation cap (default 64)
``EXPLORER_HOSTED_MAX_SEARCH``         search budget cap: candidates x max_iters x
                                       prompt positions (default 5000)
``EXPLORER_HOSTED_MAX_JOBS``           queued or running jobs per session (default 2)
``EXPLORER_HOSTED_RATE``               requests per minute per session (default 30)
``EXPLORER_HOSTED_BURST``              requests a session may make at once (default 10)
``EXPLORER_HOSTED_ADDRESS_RATE``       requests per minute per client address (default
                                       twice the session rate; its burst is twice too)
``EXPLORER_HOSTED_GLOBAL_RATE``        requests per minute for the whole server (default
                                       600; burst a tenth of it, at least 20)
``EXPLORER_HOSTED_MAX_JOBS_PER_ADDRESS`` queued or running jobs per client address
                                       (default twice the per-session cap)
``EXPLORER_HOSTED_MODEL_PER_ADDRESS``  model requests (trace, generate, RoSais...) one
                                       client address may have queued or running at once
                                       (default 2; the server runs
                                       :data:`MODEL_SLOTS` at once, so others' work
                                       starts while one address waits)
``EXPLORER_HOSTED_WAITING_PER_ADDRESS`` requests of any kind one client address may have
                                       queued or running at once (default 16)
``EXPLORER_HOSTED_TRUST_PROXY=1``      take the client address from the last
                                       ``X-Forwarded-For`` entry (default on when
                                       ``SPACE_ID`` is set: Spaces runs behind a proxy)
``EXPLORER_HOSTED_JUDGES``             judges users may pick (default ``keyword``)
``EXPLORER_HOSTED_FULL_TEXT=1``        show harmful answers of real models in full
=====================================  ==================================================

This module never imports torch, transformers or gradio.
"""
from __future__ import annotations

import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from explorer.core.errors import InputError

DEMO_NAMES = ("demo",)  # how the bundled demo model is named (None/"" also mean demo)
TRUE_VALUES = ("1", "true", "yes", "on")
FALSE_VALUES = ("0", "false", "no", "off", "")
REDACTION_NOTE = ("[... the rest is hidden: this server shows only the first sentence of "
                  "a harmful answer from a real model]")
#: Model requests the server runs at once (they take turns on the model, a forward pass
#: at a time, first come first served): with one address holding at most
#: ``max_model_per_address``, another address's request starts at once.
MODEL_SLOTS = 3
MAX_SESSIONS = 10_000  # rate-limit buckets kept before idle ones are dropped
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]]|\Z)|[\u3002\uff01\uff1f]|\n")


class PolicyError(InputError):
    """A request the hosted policy refuses; the message is one line for the user."""


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in TRUE_VALUES:
        return True
    if raw in FALSE_VALUES:
        return False
    raise PolicyError(f"{name} must be 1 or 0, got {env.get(name)!r}")


def _positive(env: Mapping[str, str], name: str, default, kind=int):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        v = kind(raw)
    except ValueError:
        v = None
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or v <= 0:
        raise PolicyError(f"{name} must be a positive number, got {raw!r}")
    return v


def _per_second(per_minute: float | None) -> float | None:
    return None if per_minute is None else per_minute / 60.0


def _as_count(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or \
            (isinstance(v, float) and (not math.isfinite(v) or v != int(v))):
        raise PolicyError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < minimum:
        raise PolicyError(f"{name} must be at least {minimum}, got {v}")
    return v


def _key(session: Any) -> str | None:
    """A session's bucket key (None: a request without one, e.g. an upload, is charged to
    its address and the server only)."""
    return None if session is None else str(session)


def is_demo_name(name: str | None) -> bool:
    """True for the names that mean the bundled demo model (None, "", "demo")."""
    return name is None or str(name).strip() in ("",) + DEMO_NAMES


def _looks_local(name: str) -> bool:
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 \
            or name.endswith((".json", ".safetensors", ".bin")) or "\x00" in name:
        return True
    try:
        return os.path.exists(os.path.expanduser(name))
    except (OSError, ValueError):
        return True


def first_sentence(text: str, max_chars: int = 200) -> str:
    """``text`` up to the end of its first sentence (or line), at most ``max_chars``."""
    t = (text or "").lstrip()
    m = _SENTENCE_END.search(t)
    cut = t[:m.end()].rstrip() if m else t
    if len(cut) > max_chars:
        cut = cut[:max_chars].rstrip()
    return cut


@dataclass
class HostedPolicy:
    """Limits for a public server; all off unless ``enabled`` (see the module docs).

    ``rate`` is in requests per second per session, ``burst`` the bucket size; ``clock``
    (monotonic seconds) is replaceable for tests.
    """

    enabled: bool = False
    model_allowlist: tuple[str, ...] = ()
    max_prompt_tokens: int = 256
    max_new_tokens: int = 64
    max_search_budget: int = 5000
    max_jobs_per_session: int = 2
    rate: float = 0.5
    burst: float = 10.0
    address_rate: float | None = None  # default 2 x rate (per second)
    global_rate: float = 10.0          # per second (600 per minute)
    max_jobs_per_address: int | None = None  # default 2 x max_jobs_per_session
    max_model_per_address: int = 2      # model requests queued or running per address
    max_waiting_per_address: int = 16   # requests of any kind queued or running per address
    trust_proxy: bool = False
    allowed_judges: tuple[str, ...] = ("keyword",)
    full_text: bool = False
    max_prompt_chars: int | None = None  # default: 16 characters per allowed token
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    _buckets: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False,
                       compare=False)

    def __post_init__(self) -> None:
        self.enabled = bool(self.enabled)
        self.full_text = bool(self.full_text)
        self.model_allowlist = tuple(m.strip() for m in self.model_allowlist if m.strip())
        self.allowed_judges = tuple(j.strip() for j in self.allowed_judges if j.strip())
        for name in ("max_prompt_tokens", "max_new_tokens", "max_search_budget",
                     "max_jobs_per_session", "max_model_per_address",
                     "max_waiting_per_address"):
            setattr(self, name, _as_count(name, getattr(self, name)))
        for name in ("rate", "burst"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not math.isfinite(v) or v <= 0:
                raise PolicyError(f"{name} must be a positive number, got {v!r}")
            setattr(self, name, float(v))
        if self.address_rate is None:
            self.address_rate = 2 * self.rate
        if self.max_jobs_per_address is None:
            self.max_jobs_per_address = 2 * self.max_jobs_per_session
        self.max_jobs_per_address = _as_count("max_jobs_per_address", self.max_jobs_per_address)
        for name in ("address_rate", "global_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not math.isfinite(v) or v <= 0:
                raise PolicyError(f"{name} must be a positive number, got {v!r}")
            setattr(self, name, float(v))
        self.trust_proxy = bool(self.trust_proxy)
        if self.max_prompt_chars is None:
            self.max_prompt_chars = 16 * self.max_prompt_tokens
        self.max_prompt_chars = _as_count("max_prompt_chars", self.max_prompt_chars)
        bad = [m for m in self.model_allowlist if not _HUB_ID_RE.match(m)]
        if bad:
            raise PolicyError(f"the model allowlist may hold hub ids (owner/name) only, "
                              f"got {bad[0]!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, enabled: bool | None = None,
                 allowlist=None, full_text: bool | None = None, **overrides) -> "HostedPolicy":
        """The policy the environment mapping ``env`` describes (the entry points pass
        ``os.environ``; None: an empty environment); flags that are not None win (``enabled``, ``allowlist``: a list or comma-separated text,
        ``full_text``, any other field by name). Malformed values raise PolicyError."""
        env = {} if env is None else env
        allow = allowlist if allowlist is not None else env.get("EXPLORER_MODEL_ALLOWLIST", "")
        if isinstance(allow, str):
            allow = allow.split(",")
        judges = env.get("EXPLORER_HOSTED_JUDGES", "").split(",")
        kw: dict[str, Any] = dict(
            enabled=_flag(env, "EXPLORER_HOSTED") if enabled is None else enabled,
            model_allowlist=tuple(allow),
            max_prompt_tokens=_positive(env, "EXPLORER_HOSTED_MAX_PROMPT_TOKENS",
                                        _positive(env, "EXPLORER_MAX_PROMPT_TOKENS", 256)),
            max_new_tokens=_positive(env, "EXPLORER_HOSTED_MAX_NEW_TOKENS", 64),
            max_search_budget=_positive(env, "EXPLORER_HOSTED_MAX_SEARCH", 5000),
            max_jobs_per_session=_positive(env, "EXPLORER_HOSTED_MAX_JOBS", 2),
            rate=_positive(env, "EXPLORER_HOSTED_RATE", 30.0, float) / 60.0,
            burst=_positive(env, "EXPLORER_HOSTED_BURST", 10.0, float),
            address_rate=_per_second(_positive(env, "EXPLORER_HOSTED_ADDRESS_RATE", None, float)),
            global_rate=_positive(env, "EXPLORER_HOSTED_GLOBAL_RATE", 600.0, float) / 60.0,
            max_jobs_per_address=_positive(env, "EXPLORER_HOSTED_MAX_JOBS_PER_ADDRESS", None),
            max_model_per_address=_positive(env, "EXPLORER_HOSTED_MODEL_PER_ADDRESS", 2),
            max_waiting_per_address=_positive(env, "EXPLORER_HOSTED_WAITING_PER_ADDRESS", 16),
            trust_proxy=_flag(env, "EXPLORER_HOSTED_TRUST_PROXY")
            if env.get("EXPLORER_HOSTED_TRUST_PROXY", "").strip() else bool(env.get("SPACE_ID")),
            full_text=_flag(env, "EXPLORER_HOSTED_FULL_TEXT") if full_text is None
            else full_text)
        if any(j.strip() for j in judges):
            kw["allowed_judges"] = tuple(judges)
        unknown = set(overrides) - set(cls.__dataclass_fields__) - {"_buckets", "_lock"}
        if unknown:
            raise TypeError(f"unknown HostedPolicy field(s) {sorted(unknown)}")
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The limits, for display (no per-session state)."""
        return {"enabled": self.enabled, "model_allowlist": list(self.model_allowlist),
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_prompt_chars": self.max_prompt_chars,
                "max_new_tokens": self.max_new_tokens,
                "max_search_budget": self.max_search_budget,
                "max_jobs_per_session": self.max_jobs_per_session,
                "requests_per_minute": self.rate * 60, "burst": self.burst,
                "requests_per_minute_per_address": self.address_rate * 60,
                "requests_per_minute_global": self.global_rate * 60,
                "max_jobs_per_address": self.max_jobs_per_address,
                "max_model_per_address": self.max_model_per_address,
                "max_waiting_per_address": self.max_waiting_per_address,
                "allowed_judges": list(self.allowed_judges), "full_text": self.full_text}

    # -- checks -------------------------------------------------------------------------
    def check_model(self, name: str | None) -> str:
        """Return the model name to load (``"demo"`` for the demo model) or refuse it:
        local paths, names that are not hub ids, and hub ids not on the allowlist."""
        if is_demo_name(name):
            return "demo"
        if not isinstance(name, str):
            raise PolicyError(f"a model name must be text, got {type(name).__name__}")
        name = name.strip()
        if not self.enabled:
            return name
        if _looks_local(name):
            raise PolicyError("local model paths are not allowed on this server; pick the "
                              "demo model or an allowed hub id")
        allowed = {m.casefold(): m for m in self.model_allowlist}
        if not _HUB_ID_RE.match(name) or name.casefold() not in allowed:
            choices = ", ".join(("demo",) + self.model_allowlist)
            raise PolicyError(f"model {name[:100]!r} is not available on this server "
                              f"(allowed: {choices})")
        return allowed[name.casefold()]

    def check_prompt(self, moe, prompt: str, system: str | None = None) -> int:
        """The templated prompt's token count (with the ``system`` prompt, whose tokens
        count against the same cap), or PolicyError: empty, not text, longer than the
        model's context, or (hosted) beyond the character or token cap."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PolicyError("the prompt is empty")
        if system is not None and not isinstance(system, str):
            raise PolicyError(f"the system prompt must be text, got {type(system).__name__}")
        chars = len(prompt) + len(system or "")
        if self.enabled and chars > self.max_prompt_chars:
            with_system = " (system prompt included)" if system else ""
            raise PolicyError(f"the prompt is too long: {chars} characters{with_system}, "
                              f"this server allows {self.max_prompt_chars}")
        try:
            n = len(moe.encode(prompt, system))
        except InputError as exc:  # too long for the model, lone surrogates, ...
            raise PolicyError(str(exc).splitlines()[0] if str(exc) else
                              "the prompt cannot be tokenised") from None
        if self.enabled and n > self.max_prompt_tokens:
            raise PolicyError(f"the prompt is too long: {n} tokens with the chat template, "
                              f"this server allows {self.max_prompt_tokens}")
        return n

    def check_generation(self, max_new_tokens) -> int:
        """``max_new_tokens`` as an int, or PolicyError: not an integer, negative, or
        (hosted) above the cap."""
        n = _as_count("max_new_tokens", max_new_tokens, minimum=0)
        if self.enabled and n > self.max_new_tokens:
            raise PolicyError(f"max_new_tokens {n} is above this server's limit of "
                              f"{self.max_new_tokens}")
        return n

    def check_jobs(self, active: int) -> None:
        """PolicyError when a session with ``active`` queued or running jobs may not
        queue another (hosted)."""
        active = _as_count("active", active, minimum=0)
        if self.enabled and active >= self.max_jobs_per_session:
            raise PolicyError(f"this session already has {active} queued or running "
                              f"job(s); the limit is {self.max_jobs_per_session}: wait for "
                              "one to finish or cancel it")

    # -- rate limit: per session, per client address, for the whole server ---------------
    def _buckets_for(self, session: str | None,
                     address: str | None) -> list[tuple[tuple, float, float]]:
        out = [] if session is None else [(("session", session), self.rate, self.burst)]
        if address:
            out.append((("address", address), self.address_rate, 2 * self.burst))
        out.append((("global",), self.global_rate, max(20.0, self.global_rate * 6)))
        return out

    def _take(self, session: str | None, cost: float,
              address: str | None = None) -> tuple[float, str]:
        """Take ``cost`` tokens from each bucket (the session's, the address's, the
        server's) when all have them: ``(0.0, "")``; else nothing is taken and the seconds
        until they do, with the name of the limit that holds."""
        now = self.clock()
        with self._lock:
            plan, wait, who = [], 0.0, ""
            for key, rate, burst in self._buckets_for(session, address):
                tokens, last = self._buckets.get(key, (burst, now))
                tokens = min(burst, tokens + max(0.0, now - last) * rate)
                plan.append((key, tokens))
                if tokens < cost and (cost - tokens) / rate > wait:
                    wait, who = (cost - tokens) / rate, key[0]
            for key, tokens in plan:
                self._buckets[key] = (tokens - cost if not wait else tokens, now)
            if len(self._buckets) > MAX_SESSIONS:  # drop the buckets that refilled
                rates = {"session": (self.rate, self.burst),
                         "address": (self.address_rate, 2 * self.burst)}
                keep = dict(plan)
                for k, (t, ts) in list(self._buckets.items()):
                    rate, burst = rates.get(k[0], (None, None))
                    if k not in keep and rate is not None and t + (now - ts) * rate >= burst:
                        del self._buckets[k]
        return wait, who

    def allow(self, session: str | None, cost: float = 1.0, address: str | None = None) -> bool:
        """Token buckets: True (and one request counted) when ``session`` (and its client
        ``address``, and the server as a whole) may make a request now; always True with
        hosted mode off."""
        if not self.enabled:
            return True
        return self._take(_key(session), float(cost), address)[0] == 0.0

    def check_rate(self, session: str | None, cost: float = 1.0,
                   address: str | None = None) -> None:
        """Like :meth:`allow`, raising PolicyError (with the wait) instead of False."""
        if not self.enabled:
            return
        wait, who = self._take(_key(session), float(cost), address)
        if wait > 0:
            whom = {"session": "this session", "address": "your address",
                    "global": "all visitors of this server"}[who]
            raise PolicyError(f"too many requests from {whom}: try again in "
                              f"{math.ceil(wait)} s")

    def address_of(self, request: Any) -> str | None:
        """The client address of a Gradio request: the socket's peer, or with
        ``trust_proxy`` the last ``X-Forwarded-For`` entry (the one the proxy added)."""
        if request is None:
            return None
        if self.trust_proxy:
            headers = getattr(request, "headers", None) or {}
            try:
                fwd = headers.get("x-forwarded-for") or ""
            except Exception:  # noqa: BLE001 - odd header containers
                fwd = ""
            last = [x.strip() for x in str(fwd).split(",") if x.strip()]
            if last:
                return last[-1][:64]
        client = getattr(request, "client", None)
        host = getattr(client, "host", None)
        return str(host)[:64] if host else None

    # -- output -------------------------------------------------------------------------
    def redact(self, text: str, verdict, is_demo_model: bool) -> str:
        """What to show of a generated ``text``: in hosted mode, when a real model (not the
        demo) produced it and ``verdict`` (a judge Verdict, a dict with ``jailbroken``, or
        a bool) deems it jailbroken, only its first sentence and a note, unless the
        operator opted out (``EXPLORER_HOSTED_FULL_TEXT=1``). Otherwise ``text``."""
        if not self.enabled or self.full_text or is_demo_model or not text:
            return text
        if isinstance(verdict, Mapping):
            harmful = bool(verdict.get("jailbroken"))
        elif isinstance(verdict, bool) or verdict is None:
            harmful = bool(verdict)
        else:
            harmful = bool(getattr(verdict, "jailbroken", False))
        if not harmful:
            return text
        head = first_sentence(text)
        return f"{head} {REDACTION_NOTE}" if head else REDACTION_NOTE
