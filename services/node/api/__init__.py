"""The node's HTTP API: the app's wiring, OpenAI routes, registry, ops, jobs, scoring, health."""
