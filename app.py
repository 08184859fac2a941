"""Sparse Safety Explorer app entry point (local and Hugging Face Spaces).

`python app.py` serves the explorer on the bundled demo model at http://127.0.0.1:7860.
Options: --model (hub id or local folder), --host, --port, --data-dir, --device; or the
environment variables EXPLORER_MODEL, EXPLORER_HOST, EXPLORER_PORT, EXPLORER_DATA_DIR,
EXPLORER_DEVICE. On Spaces (SPACE_ID set) it listens on 0.0.0.0:7860.

Hosted mode (a public server): --hosted or EXPLORER_HOSTED=1, --allow-model HUB_ID (or
EXPLORER_MODEL_ALLOWLIST) and the EXPLORER_HOSTED_* limits of explorer/hosted.py.
"""

from __future__ import annotations

import argparse
import os


def _default_host() -> str:
    if os.environ.get("EXPLORER_HOST"):
        return os.environ["EXPLORER_HOST"]
    if os.environ.get("GRADIO_SERVER_NAME"):
        return os.environ["GRADIO_SERVER_NAME"]
    return "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Sparse Safety Explorer")
    parser.add_argument("--model", default=os.environ.get("EXPLORER_MODEL"),
                        help="hub id or local folder (default: the bundled demo model)")
    parser.add_argument("--host", default=_default_host())
    parser.add_argument("--port", type=int, default=int(os.environ.get(
        "EXPLORER_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))))
    parser.add_argument("--data-dir", default=os.environ.get("EXPLORER_DATA_DIR"),
                        help="route library folder (default: $EXPLORER_DATA_DIR, /data/explorer "
                             "on Spaces with persistent storage, else ./data)")
    parser.add_argument("--device", default=os.environ.get("EXPLORER_DEVICE", "auto"),
                        help="auto | cpu | cuda[:N]")
    parser.add_argument("--hosted", action=argparse.BooleanOptionalAction, default=None,
                        help="hosted mode: limits for a public server (default: "
                             "$EXPLORER_HOSTED; the EXPLORER_HOSTED_* variables set the limits)")
    parser.add_argument("--allow-model", action="append", metavar="HUB_ID",
                        help="hosted mode: a hub id users may load (repeat; default: "
                             "$EXPLORER_MODEL_ALLOWLIST, comma-separated)")
    args = parser.parse_args(argv)
    try:
        args.policy = policy_from_args(args)
    except ValueError as exc:  # a malformed EXPLORER_HOSTED_* value
        parser.error(str(exc))
    return args


def policy_from_args(args: argparse.Namespace, env=None):
    """The hosted-mode policy: the environment, overridden by --hosted/--allow-model."""
    from explorer.hosted import HostedPolicy
    return HostedPolicy.from_env(env, enabled=args.hosted, allowlist=args.allow_model)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from explorer.ui import build_app, launch_options
    demo = build_app(args.model, data_dir=args.data_dir, device=args.device,
                     policy=args.policy)
    demo.queue(default_concurrency_limit=1,
               max_size=64 if args.policy.enabled else None).launch(
        server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main()
