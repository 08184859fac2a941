"""explorer.engine."""
