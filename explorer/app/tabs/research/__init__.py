"""explorer.app.tabs.research."""
