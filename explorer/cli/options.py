"""Options and checks that the CLI's commands share: argparse types, the model options and
the in-process model cache, output-path and route checks, and ``--json`` output."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from explorer.core.defaults import MAX_SEED
from explorer.core.errors import ExplorerError, InputError, one_line
from explorer.core.quantize import QUANTIZE_MODES, parse_quantize
from explorer.settings import Settings

if TYPE_CHECKING:
    from explorer.core.model import MoEModel
    from explorer.core.route import Route


class Command(NamedTuple):
    """One CLI command: ``configure(parser)`` adds its options, ``run(args)`` runs it and
    returns an exit status (None: 0); ``help`` is its one-line description."""

    configure: Callable
    run: Callable
    help: str


class UsageError(ExplorerError):
    """Bad input: reported as one line on stderr with exit status 2."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="hub id or local folder (default: the bundled demo model)")
    p.add_argument("--device", default="auto", type=device_arg, help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default=None, type=dtype_arg, help="float32 | bfloat16 | float16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the checkpoint (off by default)")
    p.add_argument("--quantize", default=None, type=quantize_arg,
                   help="8bit | 4bit: bitsandbytes, linear layers only (a CUDA GPU and the "
                        "quantize extra); fp8: FP8 weights, routed experts included (a GPU "
                        "of compute capability >= 8.9); int8-experts | int4-experts: integer "
                        "routed experts (CPU or GPU). Routers stay unquantized")
    p.add_argument("--threads", type=count, default=None,
                   help="torch threads (default $EXPLORER_THREADS, else $OMP_NUM_THREADS, "
                        "else the physical cores this process may use)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_system_args(p: argparse.ArgumentParser, default: str = "none") -> None:
    """``--system TEXT`` / ``--system-file FILE``: the system prompt every prompt of the
    command is templated with (read by :func:`system_from_args`); ``default`` says in
    ``--help`` what applies without them."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--system", default=None, metavar="TEXT",
                   help=f"system prompt for the chat template (default: {default}); routes "
                        "and results record it, positions count its tokens")
    g.add_argument("--system-file", default=None, metavar="FILE",
                   help="read the system prompt from this UTF-8 text file")


def system_from_args(args) -> str | None:
    """The system prompt ``--system`` / ``--system-file`` give (None: none; a blank one is
    none), or :class:`UsageError` (unreadable file, not text, too long)."""
    from explorer.core.chat import check_system
    text = getattr(args, "system", None)
    path = getattr(args, "system_file", None)
    if path is not None:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--system-file {path}: not a UTF-8 text file") from None
        except OSError as exc:
            raise UsageError(f"--system-file {path}: {exc.strerror or exc}") from None
        text = text.strip("\n")
    try:
        return check_system(text)
    except InputError as exc:
        raise UsageError(f"--system: {exc}") from None


def _int_in(text: str, lo: float | None, hi: float | None, what: str,
            kind: str = "an integer") -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise argparse.ArgumentTypeError(f"{what}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 0 (the name is historical: zero is allowed)."""
    return _int_in(text, 0, None, "expected a non-negative integer")


def count(text: str) -> int:
    """argparse type: an integer >= 1 (search budgets, sample counts)."""
    return _int_in(text, 1, None, "expected a positive integer")


def seed_int(text: str) -> int:
    """argparse type: a random seed in 0..2**32-1."""
    return _int_in(text, 0, MAX_SEED, f"a seed must lie in 0..{MAX_SEED}", "an integer seed")


def log_prob(text: str) -> float:
    """argparse type: a log-probability, a number <= 0 (``-inf`` allowed, NaN not)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(v) or v > 0:
        raise argparse.ArgumentTypeError(
            f"expected a log-probability (a number <= 0), got {text!r}")
    return v


def open_ratio(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, "
                                         f"got {text!r}")
    return v


_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:[0-9]{1,3})?)\Z")
DTYPES = ("float32", "bfloat16", "float16")


def device_arg(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE_RE.match(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, mps, cuda or cuda:N, got {text!r}")
    return text.strip().lower()


def dtype_arg(text: str) -> str:
    """argparse type: one of :data:`DTYPES`."""
    if text.strip().lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPES)}, got {text!r}")
    return text.strip().lower()


def quantize_arg(text: str) -> str:
    """argparse type: one of :data:`~explorer.core.quantize.QUANTIZE_MODES`."""
    try:
        mode = parse_quantize(text)
    except InputError:
        mode = None
    if mode is None:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(QUANTIZE_MODES)}, "
                                         f"got {text!r}")
    return mode


# -- options generated from parameter declarations (explorer.core.params) ----------------
def spec_type(name: str, spec) -> Callable[[str], object] | None:
    """The argparse type of a parameter (:class:`~explorer.core.params.Spec`): its bounds
    checked while parsing, with argparse's one-line message (None: plain text, checked by
    the parameters' own :meth:`~explorer.core.params.Params.parse`)."""
    from explorer.core.params import check_value
    if spec.kind == "int":
        low = "an integer" if spec.lo is None else {
            0: "a non-negative integer", 1: "a positive integer"}.get(
                int(spec.lo), f"an integer >= {spec.lo:g}")

        def whole(text: str) -> int:
            v = _int_in(text, spec.lo, None, f"expected {low}")
            if spec.hi is not None and v > spec.hi:
                raise argparse.ArgumentTypeError(f"expected at most {spec.hi:g}, got {v}")
            return v
        return whole
    if spec.kind == "logprob":
        return log_prob
    if spec.kind == "ratio":
        return open_ratio
    if spec.kind == "float":
        def number(text: str) -> float:
            try:
                return check_value(name, spec, float(text))
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"expected a number: {exc}") from None
        return number
    return None


def add_param_options(p: argparse.ArgumentParser, owners: dict[str, type],
                      where: str | None = None, skip: tuple[str, ...] = (),
                      title: str | None = None) -> list[str]:
    """One option per parameter of the parameter classes ``owners`` (method name ->
    :class:`~explorer.core.params.Params` subclass) offered ``where`` (see
    :meth:`~explorer.core.params.Spec.offered`), except ``skip``; a parameter that several
    methods take gets one option, whose help names them. Every option defaults to None
    (the method's own default, which the help names), so that only what a user typed
    reaches :func:`params_from_args`. Returns the parameter names added."""
    seen: dict[str, tuple] = {}
    for method, cls in owners.items():
        defaults = cls.defaults()
        for name, spec in cls.specs().items():
            if name in skip or (where is not None and not spec.offered(where)):
                continue
            if name in seen:
                seen[name][2].append(method)
                continue
            seen[name] = (spec, defaults[name], [method])
    g = p.add_argument_group(title) if title else p
    for name, (spec, default, methods) in seen.items():
        who = f"{', '.join(methods)}: " if len(owners) > 1 else ""
        dflt = (f" (default {default})" if default is not None and spec.kind != "flag"
                and "default" not in spec.help else "")
        kw: dict = {"dest": name, "default": None, "help": f"{who}{spec.help}{dflt}"}
        if spec.kind == "flag":
            kw["action"] = "store_true"
        elif spec.kind == "choice":
            kw["choices"] = list(spec.choices)
        else:
            t = spec_type(name, spec)
            if t is not None:
                kw["type"] = t
            if spec.kind == "path":
                kw["metavar"] = "FILE"
        g.add_argument(spec.option(name), **kw)
    return list(seen)


def params_from_args(args, cls) -> dict:
    """The parameters of ``cls`` the user gave on the command line (None: not given)."""
    return {name: getattr(args, name) for name in cls.specs()
            if getattr(args, name, None) is not None}


def require_prompt(text) -> str:
    """The prompt if it is usable text, else :class:`UsageError` (empty, not text)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise UsageError("the prompt is empty")
    if not isinstance(text, str):
        raise UsageError(f"the prompt must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("the prompt is not valid Unicode text (lone surrogates)") from None
    return text


def check_out_path(path: str | None, what: str = "--out", makes_folders: bool = False) -> None:
    """Refuse, before any work is done, an output path that cannot be written: a folder,
    or one whose folder is missing (``makes_folders``: whose nearest existing ancestor
    is not a folder, the command creating the missing ones)."""
    if path is None:
        return
    if not str(path).strip():
        raise UsageError(f"{what} is empty")
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file")
    parent = p.parent
    if makes_folders:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"{what} {path}: {parent} is not a folder")
    elif not parent.is_dir():
        raise UsageError(f"{what} {path}: the folder {parent} does not exist")


def check_route(moe: MoEModel, route: Route, prompt: str | None = None,
                system: str | None = None) -> None:
    """Validate ``route`` against the loaded model (and ``prompt``'s length, templated with
    ``system``).

    A provenance mismatch (route made for another model, chat template or system prompt)
    gives one ``warning:`` line on stderr when the route still validates, and is named in
    the error when it does not.
    """
    n = len(moe.encode(prompt, system)) if prompt is not None else None
    note = route.check_fits(moe.info, num_tokens=n, system=system)
    if note:
        print(f"warning: {one_line(note, limit=1000)}; it validates against the loaded model "
              f"{moe.name}, so it is applied", file=sys.stderr)


# -- loading models (with an in-process cache) --------------------------------------------
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")
MODEL_CACHE_SIZE = 2
_MODEL_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget the models :func:`load_from_args` kept (frees their memory)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


def _model_key(name: str | None) -> tuple:
    """What identifies a model for the cache: a local folder by its resolved path and
    its files' modification times (a rewritten checkpoint is reloaded), else the name."""
    from explorer.core.model import DEMO_MODEL_DIR
    if name is None or str(name) in ("", "demo"):
        path = DEMO_MODEL_DIR
    else:
        path = Path(str(name)).expanduser()
        if not path.is_dir():
            return ("hub", str(name))
    try:
        stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                             for f in path.iterdir() if f.is_file()))
    except OSError:
        stamp = ()
    return ("dir", str(path.resolve()), stamp)


def check_model_name(name: str | None) -> None:
    """Refuse, before any loading, a model name that can be neither a folder nor a hub id."""
    if name is None or name in ("", "demo"):
        return
    if "\x00" in name:
        raise UsageError("the model name contains a NUL character")
    try:
        exists = Path(name).expanduser().exists()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        exists = False
    if exists:
        return  # load_model checks that it is a model folder
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name \
            or name.endswith(".json"):
        raise UsageError(f"model path {name} does not exist")
    if not _HUB_ID_RE.match(name):
        raise UsageError(f"model {name!r} is neither an existing folder nor a hub id "
                         "(owner/name)")


def load_from_args(args):
    """The model the options ask for (``--model``, ``--device``, ``--dtype``,
    ``--trust-remote-code``, ``--quantize``), loaded once per process and kept for the next calls
    (the last :data:`MODEL_CACHE_SIZE` models; ``EXPLORER_MODEL_CACHE=0`` turns it off).
    The settings in ``args.settings`` (:class:`~explorer.settings.Settings`) give the
    prompt cap and the CPU experts kernel.

    Also refuses ``--max-new-tokens`` beyond the model's context.
    """
    from transformers.utils import logging as hf_logging

    from explorer.core.model import load_model
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    name = args.model
    check_model_name(name)
    device = args.device
    if device == "auto":  # the same model as "cpu" (or "cuda") for the cache
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = getattr(args, "settings", None) or Settings()
    quantize = getattr(args, "quantize", None)
    key = (_model_key(name), device, args.dtype, bool(args.trust_remote_code), quantize,
           settings.max_prompt_tokens, settings.experts_impl)
    use_cache = settings.model_cache
    with _CACHE_LOCK:
        moe = _MODEL_CACHE.get(key) if use_cache else None
        if moe is not None:
            _MODEL_CACHE.move_to_end(key)
    if moe is None:
        moe = load_model(name, device=device, dtype=args.dtype,
                         trust_remote_code=args.trust_remote_code, quantize=quantize,
                         max_prompt_tokens=settings.max_prompt_tokens,
                         experts_impl=settings.experts_impl)
        if use_cache:
            with _CACHE_LOCK:
                _MODEL_CACHE[key] = moe
                while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
                    _MODEL_CACHE.popitem(last=False)
    new = getattr(args, "max_new_tokens", None)
    ctx = moe.context_length
    if isinstance(new, int) and ctx is not None and new > ctx:
        raise UsageError(f"--max-new-tokens {new} is more than the model's context of "
                         f"{ctx} tokens")
    return moe


def check_common(args) -> None:
    """Checks for options that several commands share (also those defined elsewhere)."""
    for dest in ("candidates", "samples", "max_iters"):  # search budgets
        v = getattr(args, dest, None)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise UsageError(f"argument --{dest.replace('_', '-')}: expected a positive "
                             f"integer, got {v}")
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise UsageError(f"argument --seed: a seed must lie in 0..{MAX_SEED}, got {seed}")
    thr = getattr(args, "threshold", None)
    if isinstance(thr, float) and (math.isnan(thr) or thr > 0):
        raise UsageError(f"argument --threshold: expected a log-probability (a number "
                         f"<= 0), got {thr}")
    ratio = getattr(args, "mask_ratio", None)
    if isinstance(ratio, float) and not 0.0 < ratio < 1.0:
        raise UsageError(f"argument --mask-ratio: expected a number strictly between 0 "
                         f"and 1, got {ratio}")


def emit(args, obj: dict, text: str) -> None:
    if args.json:
        print(json.dumps(obj))
    else:
        print(text)


