"""The library's errors and the one formatter that turns any error into one line.

Every error the explorer raises on purpose is an :class:`ExplorerError`: bad input
(:class:`InputError` and its subclasses, which are also ``ValueError`` so that callers'
``except ValueError`` keeps working) or an unusable environment (a model that cannot be
loaded, a route library that cannot be opened). The CLI answers them with one line and exit
status 2, the app with a one-line message. Any other exception, a bare ``ValueError``
included, is a bug: exit status 1, and a logged traceback in the app.
"""

from __future__ import annotations


class ExplorerError(Exception):
    """The base of every error the explorer raises on purpose (see the module docs)."""


class InputError(ExplorerError, ValueError):
    """Bad input: a value a user or a calling program gave that cannot be used (an empty
    prompt, a number out of range, a malformed file). The message is one line that says
    what to change."""


class RouteError(InputError):
    """A route that cannot be applied to a model or prompt (bad layer, expert, size...)."""


class ParamError(InputError):
    """A method's parameter that is missing, of the wrong type or out of its bounds."""


class ModelLoadError(ExplorerError, RuntimeError):
    """The model could not be loaded (missing path, offline hub id, not an MoE LM...)."""


def brief(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters ("..." marks a cut): how a message
    quotes a value a user sent, however large."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(error: BaseException | str, limit: int = 400, with_type: bool = False) -> str:
    """The first non-blank line of an error (or text), control characters escaped, at
    most ``limit`` characters ("..." marks a cut): safe to show as one line in a terminal,
    a log or the app. ``with_type`` prefixes the exception's class name (``"ValueError:
    ..."``). A ``KeyError``'s message is its key, without quotes."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    else:
        text = str(error)
    lines = [ln for ln in text.split("\n") if ln.strip()]
    first = lines[0].strip() if lines else ""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                  for ch in first)
    if isinstance(error, BaseException):
        if not out:
            out = type(error).__name__
        elif with_type:
            out = f"{type(error).__name__}: {out}"
    return out if len(out) <= limit else out[:limit - 3] + "..."
