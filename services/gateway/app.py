"""The gateway's FastAPI app: wiring only (settings, Redis, the SSE hub, the routers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from bus.connections import connect
from bus.settings import get_bus_settings
from checkpoints.settings import get_checkpoint_settings
from services.gateway import (
    artifacts,
    errors,
    evolution_routes,
    history,
    metrics,
    sse,
    status_routes,
    studies,
    uploads,
)
from services.gateway.config import GatewaySettings, get_gateway_settings
from services.gateway.fanout import Hub


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_gateway_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.hub = Hub(get_bus_settings().redis_url, buffer_events=settings.sse_buffer_events)
        try:
            yield
        finally:
            app.state.hub.close()

    app = FastAPI(title="regime3 gateway", lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = connect(check=False)
    app.state.checkpoints_root = get_checkpoint_settings().checkpoints_path
    errors.install(app)
    for module in (
        sse,
        status_routes,
        evolution_routes,
        history,
        studies,
        artifacts,
        uploads,
        metrics,
    ):
        app.include_router(module.router)

    @app.get("/healthz", response_model=None)
    def healthz(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            request.app.state.redis.ping()
        except redis.RedisError as exc:
            return JSONResponse({"ok": False, "redis": str(exc)}, status_code=503)
        return {"ok": True, "sse_clients": len(request.app.state.hub.clients)}

    # Last, so every API route above wins over a static file of the same name.
    dashboard = settings.dashboard_dir
    if (dashboard / "index.html").is_file():
        app.mount("/", StaticFiles(directory=dashboard, html=True), name="dashboard")
    else:

        @app.get("/", response_class=PlainTextResponse)
        def no_dashboard() -> str:
            return (
                f"regime3 gateway: no dashboard at {dashboard} (no index.html there).\n"
                "Point R3_DASHBOARD_DIR at the dashboards/ directory of a regime3 checkout "
                "and restart the gateway. The API works: /events, /status/training_status.json, "
                "/metrics, /healthz.\n"
            )

    return app
