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
def user_errors(action: str, detail: bool = True):
    """Turn any exception into a ``gr.Error`` with a one-line message. The explorer's own
    refusals (:class:`~explorer.core.errors.ExplorerError`: bad input, hosted-mode
    refusals, a model that cannot be loaded) show their message alone; an ``OSError`` (a
    file or disk the system refused) says what kind of failure it was, without paths;
    anything else, a bare ``ValueError`` included, is a bug: its traceback goes to the log
    and the message is "<action> failed: <Type>: ..." (``detail``, a local app) or "<action>
    failed on the server" (``detail`` off: a hosted app shows no internals). A ``gr.Error``
    passes through unchanged."""
    try:
        yield
    except gr.Error:
        raise
    except ExplorerError as exc:
        raise gr.Error(html.escape(one_line(exc), quote=False), print_exception=False) from None
    except Exception as exc:  # noqa: BLE001 - the app must keep running
        raise gr.Error(message_of(exc, action, detail), print_exception=False) from None


def toast(message: str, title: str = "Error") -> None:
    """Show ``message`` (already HTML-escaped) as a toast; nothing else changes."""
    gr.Warning(message, title=title)


def skips(n: int):
    """``gr.skip()`` for each of ``n`` outputs (what a refused UI event returns)."""
    return None if n == 0 else gr.skip() if n == 1 else tuple(gr.skip() for _ in range(n))


def message_of(exc: BaseException, action: str, detail: bool = True) -> str:
    """The one line shown for ``exc`` (HTML-escaped): a ``gr.Error``'s own message, an
    explorer refusal's, an ``OSError``'s kind (see :func:`os_message`); anything else is a
    bug, logged with its traceback, shown with its type and message only with ``detail``."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    if isinstance(exc, ExplorerError):
        return html.escape(one_line(exc), quote=False)
    if isinstance(exc, OSError):
        log.warning("%s failed: %s", action, exc)
        return html.escape(os_message(exc, action, detail), quote=False)
    log.error("%s failed: %s", action, exc, exc_info=exc)
    if not detail:
        return html.escape(f"{action} failed on the server; try again later", quote=False)
    return html.escape(f"{action} failed: {type(exc).__name__}: {one_line(exc)}", quote=False)


def os_message(exc: OSError, action: str, detail: bool = True) -> str:
    """What a user hears of a file or disk failure: its kind, never a path of the server
    (``detail``: the system's own words too, without the file name)."""
    import errno
    kinds = {errno.ENOSPC: "the server's disk is full", errno.EROFS: "the server's data "
             "folder is read-only", errno.EACCES: "the server may not write its data folder",
             errno.EDQUOT: "the server's disk quota is used up"}
    kind = kinds.get(exc.errno or 0)
    if kind is None:
        kind = f"a file operation failed ({exc.strerror})" if detail and exc.strerror \
            else "a file operation failed on the server"
    return f"{action} failed: {kind}"


def as_toasts(fn, n_outputs: int, action: str = "This action", detail: bool = True):
    """``fn`` (a UI callback: plain or generator) that, instead of raising, shows its error
    as a toast and leaves every one of its ``n_outputs`` components as it was
    (``gr.skip()``). A raised ``gr.Error`` would turn them into red "Error" badges.
    ``detail``: see :func:`user_errors`."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown, the screen stays
                toast(message_of(exc, action, detail))
                yield skips(n_outputs)
        return gen

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown, the screen stays
            toast(message_of(exc, action, detail))
            return skips(n_outputs)
    return plain
