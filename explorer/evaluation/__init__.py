"""explorer.evaluation."""
