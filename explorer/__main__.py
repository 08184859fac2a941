"""``python -m explorer``: the command-line interface (see :mod:`explorer.cli.main`)."""

from explorer.cli.main import run

run()
