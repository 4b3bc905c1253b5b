"""The inbox service: files dropped into a folder become queued training jobs."""
