"""explorer.methods."""
