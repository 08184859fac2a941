"""``python -m explorer``: the command-line interface (see explorer.cli)."""

import sys

from .cli import main

sys.exit(main())
