"""The inference node: OpenAI-compatible batched serving, model registry, hot swaps, jobs."""
