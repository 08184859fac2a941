"""Command-line interface: ``python -m explorer <command> ...``.

Every command accepts ``--json`` (one JSON object on stdout) and ``--model`` (demo model
by default). Bad input of any kind exits with status 2 and one line on stderr.
Subcommands register themselves in :data:`COMMANDS` with :func:`register`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def register(name: str, help: str, configure: Callable, run: Callable) -> None:
    """Register a subcommand: ``configure(parser)`` adds options, ``run(args)`` runs it."""
    COMMANDS[name] = (configure, run, help)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="hub id or local folder (default: the bundled demo model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the checkpoint (off by default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def require_prompt(text: str | None) -> str:
    if text is None or not text.strip():
        raise UsageError("the prompt is empty")
    return text


def load_from_args(args):
    from transformers.utils import logging as hf_logging
    from .model import load_model
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return load_model(args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code)


def emit(args, obj: dict, text: str) -> None:
    if args.json:
        print(json.dumps(obj))
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    from . import commands  # noqa: F401 - registers the built-in subcommands
    parser = _Parser(prog="python -m explorer",
                     description="Sparse Safety Explorer: unsafe routes in MoE LLMs")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, (configure, _, help_) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    from .model import ModelLoadError
    from .route import RouteError
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return COMMANDS[args.command][1](args) or 0
    except (UsageError, RouteError, ModelLoadError, ValueError, FileNotFoundError,
            OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for users
        if os.environ.get("EXPLORER_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
