"""What every tab of the app shares: event settings, the ZeroGPU wrapper, one-line user
errors, argument checks and the streamed trace (UI values -> library calls only)."""

from __future__ import annotations

import contextlib
import functools
import html
import inspect
import logging
import math
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from explorer.core.errors import ExplorerError, brief, one_line
from explorer.core.model import DEMO_MODEL_DIR, MoEModel
from explorer.core.route import Route
from explorer.viz import figures as plots

log = logging.getLogger("explorer.app.build")

MODEL_SLOT = dict(concurrency_limit=1, concurrency_id="model")
FREE = dict(concurrency_limit=None)
UI = dict(api_visibility="private")
VIEWS = ("baseline", "re-routed")
MODE_CHOICES = [(v, k) for k, v in plots.COLOR_MODES.items()]

try:  # Hugging Face ZeroGPU: run model work inside spaces.GPU when available
    import spaces  # type: ignore
except Exception:  # noqa: BLE001 - optional
    spaces = None


def gpu(duration: int = 60):
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is importable, else a no-op."""
    def deco(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
    return deco


def gpu_window(seconds: float):
    """The GPU window of background searches: a function that wraps a function into
    ``spaces.GPU(duration=seconds)`` when the ``spaces`` package is importable, else None
    (a search then runs in one piece; see :class:`explorer.storage.jobs.JobManager`)."""
    return gpu(seconds) if spaces is not None else None


# -- errors --------------------------------------------------------------------------------
def fail(message: str):
    """Raise ``message`` as a one-line ``gr.Error`` (HTML-escaped, no traceback in the
    log)."""
    raise gr.Error(html.escape(message, quote=False), print_exception=False)


@contextlib.contextmanager
def user_errors(action: str):
    """Turn any exception into a ``gr.Error`` with a one-line message. The explorer's own
    refusals (:class:`~explorer.core.errors.ExplorerError`: bad input, hosted-mode
    refusals, a model that cannot be loaded) and ``OSError`` (a file or disk the system
    refused) show their message alone; anything else, a bare ``ValueError`` included, is a
    bug: "<action> failed: <Type>: ..." and its traceback in the log. A ``gr.Error``
    passes through unchanged."""
    try:
        yield
    except gr.Error:
        raise
    except (ExplorerError, OSError) as exc:
        raise gr.Error(html.escape(one_line(exc), quote=False), print_exception=False) from None
    except Exception as exc:  # noqa: BLE001 - the app must keep running
        log.exception("%s failed", action)
        msg = f"{action} failed: {type(exc).__name__}: {one_line(exc)}"
        raise gr.Error(html.escape(msg, quote=False), print_exception=False) from None


def toast(message: str, title: str = "Error") -> None:
    """Show ``message`` (already HTML-escaped) as a toast; nothing else changes."""
    gr.Warning(message, title=title)


def skips(n: int):
    """``gr.skip()`` for each of ``n`` outputs (what a refused UI event returns)."""
    return None if n == 0 else gr.skip() if n == 1 else tuple(gr.skip() for _ in range(n))


def _message_of(exc: BaseException, action: str) -> str:
    if isinstance(exc, gr.Error):
        return str(exc.message)
    log.error("%s failed: %s", action, exc, exc_info=exc)
    return html.escape(f"{action} failed: {type(exc).__name__}: {one_line(exc)}", quote=False)


def keep_screen_on_error(fn, n_outputs: int, action: str = "This action"):
    """``fn`` (a UI callback: plain, generator or async) that, instead of raising, shows its
    error as a toast and leaves every one of its ``n_outputs`` components as it was
    (``gr.skip()``). A raised ``gr.Error`` would turn them into red "Error" badges."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args, **kwargs):
            try:
                async for out in fn(*args, **kwargs):
                    yield out
            except Exception as exc:  # noqa: BLE001 - shown, the screen stays
                toast(_message_of(exc, action))
                yield skips(n_outputs)
        return agen
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown, the screen stays
                toast(_message_of(exc, action))
                yield skips(n_outputs)
        return gen
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown, the screen stays
                toast(_message_of(exc, action))
                return skips(n_outputs)
        return coro

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown, the screen stays
            toast(_message_of(exc, action))
            return skips(n_outputs)
    return plain


def errors_as_toasts(demo: gr.Blocks) -> int:
    """Make every UI event of ``demo`` (``api_visibility="private"``) show its errors as
    toasts and leave its outputs as they were (see :func:`keep_screen_on_error`). The
    named API endpoints keep raising, so API clients still get an error. Returns how
    many events were wrapped. The one place where UI errors are turned into toasts."""
    n = 0
    for block_fn in demo.fns.values():
        if block_fn.fn is None or block_fn.api_visibility != "private" \
                or getattr(block_fn.fn, "__sse_toasts__", False):
            continue
        wrapped = keep_screen_on_error(block_fn.fn, len(block_fn.outputs),
                                       action=str(block_fn.name or "This action"))
        wrapped.__sse_toasts__ = True
        block_fn.fn = wrapped
        n += 1
    return n


def need_prompt(prompt: str | None) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        fail("The prompt is empty: type a request first.")
    return prompt


def whole_number(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (either may be None), else a one-line
    ``gr.Error`` naming ``name`` (floats must be whole, booleans are refused)."""
    try:  # the bare ValueErrors below are caught right here, as float()'s own are
        if value is None or isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            v = value
        else:
            if isinstance(value, str) and len(value) > 40:
                raise ValueError
            f = float(value)
            if not math.isfinite(f) or f != int(f):
                raise ValueError
            v = int(f)
    except (TypeError, ValueError, OverflowError):
        fail(f"{name} must be a whole number, got {brief(value)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        fail(f"{name} must lie in {lo if lo is not None else '-∞'}.."
              f"{hi if hi is not None else '∞'}, got {brief(v)}")
    return v



def fraction(value, name: str, kind: str = "a probability") -> float:
    """A number strictly between 0 and 1 (a probability, a mask ratio)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        fail(f"{name} must be {kind}, got {str(value)[:40]!r}")
    if not 0.0 < v < 1.0:
        fail(f"{name} must lie strictly between 0 and 1, got {v}")
    return v


#: The largest row id SQLite stores (ids beyond it are refused before any query).
MAX_ROW_ID = 2**63 - 1


def text_arg(value: Any, name: str) -> str:
    """``value`` if it is text (None: ""), else a one-line "expected text" error."""
    if value is None:
        return ""
    if not isinstance(value, str):
        fail(f"{name} must be text, got {type(value).__name__}")
    return value


def moe_layer_count(ctx, default: int = 16) -> int:
    """How many MoE layers the loaded model has (``default`` without a model): the largest
    top-L a slider offers."""
    moe = getattr(ctx, "moe", None)
    return max(1, len(moe.moe_layers)) if moe is not None else default


def session_of(request: Any, fallback: str = "anonymous") -> str:
    """The Gradio session of a request (one browser tab or one API client)."""
    return str(getattr(request, "session_hash", None) or fallback)


def is_demo_model(moe: MoEModel) -> bool:
    """Whether ``moe`` is the bundled demo model (by name, or loaded from its folder)."""
    name = str(getattr(moe, "name", "") or "")
    if name in ("", "demo"):
        return True
    try:
        return Path(name).resolve() == DEMO_MODEL_DIR.resolve()
    except (OSError, ValueError):
        return False


# -- library calls ---------------------------------------------------------------------------
def stream_trace(moe: MoEModel, prompt: str, max_new_tokens: int, route: Route | None = None,
                 system: str | None = None) -> Iterator[tuple[str, Any]]:
    """Run :func:`explorer.core.trace.trace` in a thread (the prompt templated with
    ``system``); yield ``(text so far, None)`` per streamed piece, then ``(text, trace)``.
    Errors are re-raised here."""
    from explorer.core.trace import trace
    q: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work():
        try:
            box["trace"] = trace(moe, prompt, max_new_tokens=max_new_tokens, route=route,
                                 on_token=q.put, system=system)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            q.put(None)

    threading.Thread(target=work, name="explorer-trace", daemon=True).start()
    text = ""
    while True:
        piece = q.get()
        if piece is None:
            break
        text += piece
        yield text, None
    if "error" in box:
        raise box["error"]
    tr = box["trace"]
    yield tr.completion, tr


def route_of_edits(edits: list[dict] | None, info: dict | None = None) -> Route:
    return Route.from_dict({"edits": list(edits or []), "info": dict(info or {})})


def keyword_verdict(prompt: str, text: str):
    """The offline keyword judge's :class:`~explorer.judges.Verdict`."""
    from explorer.judges import get_judge
    return get_judge("keyword").judge(prompt, text)


def verdict_kind(prompt: str, text: str) -> str:
    """The keyword judge's verdict in one word: ``jailbroken``, ``refusal`` or ``empty``."""
    v = keyword_verdict(prompt, text)
    return "jailbroken" if v.jailbroken else ("refusal" if v.refusal else "empty")


def verdict_text(prompt: str, text: str) -> str:
    kind = verdict_kind(prompt, text)
    return "jailbroken (no refusal)" if kind == "jailbroken" else kind


def answer_verdict(moe: MoEModel, prompt: str, text: str, route: Route | None = None,
                   target: str | None = None, system: str | None = None) -> dict:
    """What the badges next to an answer show: the keyword judge's verdict on ``text`` and
    log P(``target`` | prompt templated with ``system``) under ``route`` (teacher-forced;
    default target: the search default, "Sure, here is"). One forward pass of prompt +
    target."""
    from explorer.core.defaults import DEFAULT_TARGET
    from explorer.core.forward import target_logprob
    from explorer.research.common import target_ids
    target = target or DEFAULT_TARGET
    lp = float(target_logprob(moe, moe.encode(prompt, system), target_ids(moe, target),
                              [route if route is not None else Route()])[0])
    return {"verdict": verdict_kind(prompt, text), "logprob": lp, "target": target}


def usable_judges(ctx) -> list[str]:
    """Judges that can be set up here from the app's settings (the rubric judge needs its
    URL in the settings, the classifier a model path): the Search tab offers these."""
    from explorer.judges import JUDGES
    out = []
    for name in sorted(JUDGES):
        try:
            ctx.judge(name)
        except Exception:  # noqa: BLE001 - not configured on this server
            continue
        out.append(name)
    return out or ["keyword"]
