"""CLI command ``plan``: what a model needs before its download (see
:mod:`explorer.bench.plan`).

Examples::

    python -m explorer plan --model mistralai/Mixtral-8x7B-v0.1
    python -m explorer plan --model ./my-moe --quantize int8 --gpu-memory 40
    python -m explorer plan --model Qwen/Qwen3-30B-A3B --prompt-tokens 256 --json

Only the config is read (a folder's ``config.json``, or the hub's config file); the model
is built on the meta device, so no weight is downloaded or allocated.
"""

from __future__ import annotations

import argparse

from explorer.bench.plan import PRECISIONS, check_gpu_memory, parse_precision
from explorer.cli.options import Command, check_model_name, count, emit
from explorer.core.defaults import (
    FSOUR_CANDIDATES,
    FSOUR_MAX_ITERS,
    PLAN_GPU_GB,
    PLAN_PROMPT_TOKENS,
)
from explorer.core.errors import InputError


def gpu_gb(text: str) -> float:
    """argparse type: GPU memory in GB (:func:`~explorer.bench.plan.check_gpu_memory`)."""
    try:
        return check_gpu_memory(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def precision_arg(text: str) -> str:
    """argparse type: a precision of :data:`~explorer.bench.plan.PRECISIONS`."""
    try:
        return parse_precision(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configure(p):
    p.add_argument("--model", default=None,
                   help="hub id or local folder (default: the bundled demo model); only its "
                        "config is read")
    p.add_argument("--quantize", default=None, type=precision_arg, metavar="MODE",
                   help=f"the precision the search figures use: {', '.join(PRECISIONS)}, or "
                        "8bit / 4bit (the loader's --quantize) (default bf16); every "
                        "precision's weights are listed")
    p.add_argument("--gpu-memory", type=gpu_gb, default=PLAN_GPU_GB, metavar="GB",
                   help=f"one GPU's memory in GB (default {PLAN_GPU_GB:g})")
    p.add_argument("--prompt-tokens", type=count, default=PLAN_PROMPT_TOKENS, metavar="N",
                   help=f"templated prompt tokens (default {PLAN_PROMPT_TOKENS})")
    p.add_argument("--candidates", type=count, default=FSOUR_CANDIDATES,
                   help=f"F-SOUR candidates per cell (default {FSOUR_CANDIDATES})")
    p.add_argument("--max-iters", type=count, default=FSOUR_MAX_ITERS,
                   help=f"F-SOUR restarts (default {FSOUR_MAX_ITERS})")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the checkpoint (off by default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run(args):
    from explorer.bench.plan import plan_model, plan_text
    check_model_name(args.model)
    plan = plan_model(args.model, precision=args.quantize, gpu_memory_gb=args.gpu_memory,
                      prompt_tokens=args.prompt_tokens, candidates=args.candidates,
                      max_iters=args.max_iters, trust_remote_code=args.trust_remote_code)
    emit(args, plan.to_dict(), plan_text(plan))


#: This group's commands (joined in :data:`explorer.cli.main.COMMANDS`).
COMMANDS = {
    "plan": Command(_configure, _run,
                    "a plan before the download: parameters by part, weight memory per "
                    "precision, the search's memory and forward passes, GPUs needed (reads "
                    "the config only)"),
}
