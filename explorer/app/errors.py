"""How the app answers a failure: one line, never a traceback.

:func:`user_errors` turns any exception into a one-line ``gr.Error``; :func:`fail` raises
one; :func:`as_toasts` makes a UI callback show its error as a toast and leave its outputs
as they were. The gate (:mod:`explorer.app.gate`) applies them to every door, so views
just raise.
"""

from __future__ import annotations

import contextlib
import functools
import html
import inspect
import logging

import gradio as gr

from explorer.core.errors import ExplorerError, one_line

log = logging.getLogger("explorer.app")


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


def message_of(exc: BaseException, action: str) -> str:
    """The one line shown for ``exc`` (a ``gr.Error``'s own message; anything else is a
    bug, logged with its traceback)."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    log.error("%s failed: %s", action, exc, exc_info=exc)
    return html.escape(f"{action} failed: {type(exc).__name__}: {one_line(exc)}", quote=False)


def as_toasts(fn, n_outputs: int, action: str = "This action"):
    """``fn`` (a UI callback: plain or generator) that, instead of raising, shows its error
    as a toast and leaves every one of its ``n_outputs`` components as it was
    (``gr.skip()``). A raised ``gr.Error`` would turn them into red "Error" badges."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown, the screen stays
                toast(message_of(exc, action))
                yield skips(n_outputs)
        return gen

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown, the screen stays
            toast(message_of(exc, action))
            return skips(n_outputs)
    return plain
