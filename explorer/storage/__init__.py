"""explorer.storage."""
