"""`python -m services.node`: the node's HTTP API on R3_NODE_HOST:R3_NODE_PORT."""

from __future__ import annotations

import logging

import uvicorn

from services.node.api.app import create_app
from services.node.config import get_node_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_node_settings()
    # Requests still open after the drain bound are cancelled (their batch rows freed), so
    # SIGTERM stops the node within about R3_NODE_DRAIN_SECONDS, never waiting on long generations.
    uvicorn.run(
        create_app(settings),
        host=settings.node_host,
        port=settings.node_port,
        timeout_graceful_shutdown=max(1, round(settings.node_drain_seconds)),
    )


if __name__ == "__main__":
    main()
