"""explorer.app.tabs."""
