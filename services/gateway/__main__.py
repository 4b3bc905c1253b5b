"""`python -m services.gateway`: the gateway on R3_GATEWAY_HOST:R3_GATEWAY_PORT under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from services.gateway.app import create_app
from services.gateway.config import get_gateway_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_gateway_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="info",
        access_log=False,  # an SSE client or a scrape a second would drown the log
        timeout_graceful_shutdown=3,  # SSE streams never end by themselves
    )


if __name__ == "__main__":
    main()
