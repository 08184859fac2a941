"""explorer.app."""
