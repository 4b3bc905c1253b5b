"""The gateway service: live events over SSE, the status payload, artifacts, uploads, metrics."""
