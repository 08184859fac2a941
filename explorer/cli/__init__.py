"""explorer.cli."""
