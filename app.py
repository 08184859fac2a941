"""Sparse Safety Explorer app entry point (local and Hugging Face Spaces).

`python app.py` serves the explorer on the bundled demo model at http://127.0.0.1:7860.
Options: --model (hub id or local folder), --host, --port, --data-dir, --device, --quantize;
or the environment variables EXPLORER_MODEL, EXPLORER_HOST, EXPLORER_PORT, EXPLORER_DATA_DIR,
EXPLORER_DEVICE, EXPLORER_QUANTIZE. On Spaces (SPACE_ID set) it listens on 0.0.0.0:7860.

Hosted mode (a public server): --hosted or EXPLORER_HOSTED=1, --allow-model HUB_ID (or
EXPLORER_MODEL_ALLOWLIST) and the EXPLORER_HOSTED_* limits of explorer/app/hosted.py.

This launcher is the app's only reader of the environment: it builds one
:class:`explorer.settings.Settings` from the environment and the flags and passes it down.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None, env=None) -> argparse.Namespace:
    """The flags, and ``args.settings``: the environment (``env``, default ``os.environ``)
    overridden by the flags that were given; ``args.policy`` is its hosted-mode policy."""
    from explorer.cli.options import quantize_arg
    from explorer.settings import Settings
    parser = argparse.ArgumentParser(description="Sparse Safety Explorer")
    parser.add_argument("--model", default=None,
                        help="hub id or local folder (default: $EXPLORER_MODEL, else the "
                             "bundled demo model)")
    parser.add_argument("--host", default=None,
                        help="address (default: $EXPLORER_HOST, 0.0.0.0 on Spaces, else "
                             "127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: "
                        "$EXPLORER_PORT, else 7860)")
    parser.add_argument("--data-dir", default=None,
                        help="route library folder (default: $EXPLORER_DATA_DIR, /data/explorer "
                             "on Spaces with persistent storage, else ./data)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: "
                        "$EXPLORER_DEVICE, else auto)")
    parser.add_argument("--quantize", default=None, type=quantize_arg,
                        help="8bit | 4bit: load the weights through bitsandbytes (a CUDA GPU "
                             "and the quantize extra needed; default: $EXPLORER_QUANTIZE, "
                             "else full precision)")
    parser.add_argument("--hosted", action=argparse.BooleanOptionalAction, default=None,
                        help="hosted mode: limits for a public server (default: "
                             "$EXPLORER_HOSTED; the EXPLORER_HOSTED_* variables set the limits)")
    parser.add_argument("--allow-model", action="append", metavar="HUB_ID",
                        help="hosted mode: a hub id users may load (repeat; default: "
                             "$EXPLORER_MODEL_ALLOWLIST, comma-separated)")
    args = parser.parse_args(argv)
    from explorer.app.hosted import HostedPolicy
    env = Settings.environment() if env is None else env
    try:
        policy = HostedPolicy.from_env(env, enabled=args.hosted, allowlist=args.allow_model)
        args.settings = Settings.from_env(
            env, policy=policy, model=args.model, host=args.host, port=args.port,
            data_dir=args.data_dir, device=args.device, quantize=args.quantize)
    except ValueError as exc:  # a malformed EXPLORER_* value
        parser.error(str(exc))
    args.policy = args.settings.policy
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = args.settings
    s.apply_threads()
    from explorer.app.build import build_app, launch_options, queue_options
    from explorer.attacks import load_plugins
    from explorer.core.errors import ExplorerError
    try:
        load_plugins(s.plugins)  # EXPLORER_PLUGINS: attacks and judges of the user's own
        demo = build_app(s.model, data_dir=s.data_dir, device=s.device, settings=s)
    except ExplorerError as exc:  # a plugin that cannot be imported; an unwritable or full
        # data folder: one line, status 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    demo.queue(**queue_options(s.policy)).launch(
        server_name=s.host, server_port=s.port, **launch_options(demo))


if __name__ == "__main__":
    main()
