"""Fixed validation sets, their scoring, the trend rule and the evolution of probe answers."""
