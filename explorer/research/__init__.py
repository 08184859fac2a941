"""explorer.research."""
