"""explorer.viz."""
