"""Command-line interface: ``python -m explorer <command> ...``.

Every command accepts ``--json`` (one JSON object on stdout) and ``--model`` (demo model
by default). The commands live in :mod:`explorer.cli.commands`, one module per group,
each with a ``COMMANDS`` table; :data:`COMMANDS` here joins them in one explicit registry.

Exit status of :func:`main` (and ``python -m explorer``):

- 0: success (``--help`` included);
- 2: bad input of any kind (options, prompts, route or dataset files, model paths,
  judge endpoints, limits), i.e. an :class:`~explorer.core.errors.ExplorerError`
  (:class:`~explorer.cli.options.UsageError`, :class:`~explorer.core.errors.InputError`
  and its subclasses, :class:`~explorer.core.errors.ModelLoadError`): one line
  ``error: ...`` on stderr, no traceback;
- 2 as well: an ``OSError``, a file, folder or disk the system refused (missing, not
  readable or writable, full): not bad input as such, but nothing a traceback would help
  with either, so the same one line;
- 1: an internal error, i.e. a bug: any other exception, a bare ``ValueError`` included,
  gives one line ``error: <ExceptionType>: ...`` on stderr (``EXPLORER_DEBUG=1`` lets the
  exception and its traceback through instead);
- 130: interrupted (Ctrl-C).

A route whose provenance (model, chat template) differs from the loaded model's gives
one ``warning: ...`` line on stderr and is then validated against the loaded model.
In-process calls (tests, notebooks) reuse loaded models: see :func:`load_from_args`.
"""

from __future__ import annotations

import argparse
import sys

from explorer.cli.commands import bench, evaluate, experts, inspect, plan, research, search
from explorer.cli.options import UsageError, check_common, one_line
from explorer.core.errors import ExplorerError
from explorer.engine.tuning import tuned
from explorer.settings import Settings

#: The command groups, in the order ``--help`` lists them.
GROUPS = (inspect, evaluate, search, bench, plan, research, experts)
#: Every command by name: ``(configure, run, help)`` (:class:`~explorer.cli.options.Command`).
COMMANDS = {name: cmd for group in GROUPS for name, cmd in group.COMMANDS.items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message}")

    def _get_values(self, action, arg_strings):
        # ``--prompt=--``: Python 3.11's argparse drops the "--" as if it ended the options
        # and hands the option an empty list; a one-value option given "--" that way means
        # the text "--" (with a space, "--prompt --" still lacks its value)
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            return self._get_value(action, "--")
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m explorer",
                     description="Sparse Safety Explorer: unsafe routes in MoE LLMs")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, (configure, _, help_) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_, description=help_))
    return parser


_PARSER: tuple[tuple, argparse.ArgumentParser] | None = None


def _parser() -> argparse.ArgumentParser:
    """The parser, built once per set of registered commands, attacks, defenses and judges (its
    choices and options come from their registries; parsing keeps no state)."""
    global _PARSER
    from explorer.attacks import registry_version
    from explorer.defenses import defenses_version
    from explorer.judges import JUDGES
    key = (tuple((n, id(c), id(r)) for n, (c, r, _) in COMMANDS.items()), registry_version(),
           defenses_version(), tuple(JUDGES.items()))
    if _PARSER is None or _PARSER[0] != key:
        _PARSER = (key, build_parser())
    return _PARSER[1]


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """Run one command; returns the exit status (see the module docs). ``settings``
    default to :meth:`Settings.from_env` (the environment, read here and only here)."""
    debug = False
    try:
        settings = settings if settings is not None else Settings.from_env()
        debug = settings.debug
        if settings.plugins:
            from explorer.attacks import load_plugins
            load_plugins(settings.plugins)
        parser = _parser()
        args = parser.parse_args(argv)
        if getattr(args, "threads", None):
            settings = settings.replace(threads=args.threads)
        args.settings = settings
        if not args.command:
            parser.print_help()
            print(f"error: choose a command: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        check_common(args)
        settings.apply_threads()  # after parsing: --help needs no torch
        with tuned(settings.tuning):
            return COMMANDS[args.command][1](args) or 0
    except (ExplorerError, OSError) as exc:  # bad input, or a file the system refused
        msg = one_line(exc, limit=1000) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help (status 0) from argparse
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for users
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {one_line(exc, limit=1000)}", file=sys.stderr)
        return 1


def run() -> None:
    """The ``explorer`` console script (the same as ``python -m explorer``)."""
    sys.exit(main())
