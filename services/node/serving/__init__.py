"""Serving: the engine (batching, swaps), its KV cache and decode graphs, thinking, loading."""
