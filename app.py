"""Sparse Safety Explorer app entry point (local and Hugging Face Spaces).

`python app.py` serves the explorer on the bundled demo model at http://127.0.0.1:7860.
Options: --model (hub id or local folder), --host, --port, --data-dir, --device; or the
environment variables EXPLORER_MODEL, EXPLORER_HOST, EXPLORER_PORT, EXPLORER_DATA_DIR,
EXPLORER_DEVICE. On Spaces (SPACE_ID set) it listens on 0.0.0.0:7860.
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


def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)
    from explorer.ui import build_app, launch_options
    demo = build_app(args.model, data_dir=args.data_dir, device=args.device)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main()
