"""explorer.cli.commands."""
