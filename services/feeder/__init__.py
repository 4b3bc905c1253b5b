"""Self-improvement: keep the training queue fed with generated data, on a curriculum."""
