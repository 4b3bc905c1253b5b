"""The node's FastAPI app: wiring only (state at startup, routers, background tasks, limits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool

from bus.connections import connect
from bus.publish import Publisher
from bus.settings import get_bus_settings
from services.model.loading import resolve_model_dir
from services.node.api import (
    health_routes,
    jobs_routes,
    openai_api,
    ops_routes,
    registry_routes,
    scoring,
)
from services.node.api.edge import BodyLimit, install_error_handlers
from services.node.config import NodeSettings, get_node_settings
from services.node.errors import ModelLoadError, RegistryError
from services.node.hardware import ops
from services.node.pulling import checkpoint_watcher
from services.node.pulling.activation import entry_path
from services.node.pulling.registry import Registry
from services.node.serving.engine import Engine, LoadedModel
from services.node.serving.loading import load_for_serving, warm_up
from services.node.state import NodeState

log = logging.getLogger(__name__)

# Routers in the order their routes are matched, and the background tasks: each task starts
# once the model is loaded, runs for the app's life and is cancelled at shutdown (blocking
# work goes through asyncio.to_thread inside).
ROUTERS: tuple[APIRouter, ...] = (
    openai_api.router,
    registry_routes.router,
    ops_routes.router,
    jobs_routes.router,
    scoring.router,
    health_routes.router,  # /healthz for compose and `regime3 health`
)
BackgroundTask = Callable[[NodeState], Coroutine[Any, Any, None]]
BACKGROUND_TASKS: tuple[BackgroundTask, ...] = (
    checkpoint_watcher.run,
    ops.run,  # telemetry and the power schedule
)


def _load(path: Any, version: str, settings: NodeSettings, step: int | None) -> LoadedModel:
    loaded = load_for_serving(path, version, settings, step=step)
    warm_up(loaded)
    return loaded


def startup_model(settings: NodeSettings, registry: Registry) -> LoadedModel:
    """The registry's active model if it loads, else the default one (R3_MODEL or embedded).

    The default is registered (id = its directory name) and made active, so the registry
    always says what is serving.
    """
    active = registry.active_id()
    if active is not None:
        try:
            entry = registry.get(active)
            return _load(entry_path(settings, entry), active, settings, entry.step)
        except (ModelLoadError, RegistryError) as exc:
            log.warning("the registry's active model does not load (%s); using the default", exc)
    path = resolve_model_dir(None)
    version = path.name
    loaded = _load(path, version, settings, None)
    registry.register(version, path=str(path), source="default")
    registry.set_active(version)
    return loaded


def build_state(settings: NodeSettings) -> NodeState:
    """Connect to Redis, load the startup model and start the engine (blocking: seconds)."""
    bus = get_bus_settings()
    connection = connect()
    node_name = settings.node_name or bus.host_name
    registry = Registry(connection, node_name)
    loaded = startup_model(settings, registry)
    engine = Engine(
        loaded,
        max_batch=settings.node_max_batch,
        batch_wait_ms=settings.node_batch_wait_seconds * 1000,
        max_queue=settings.node_max_queue,
        cuda_graphs=settings.node_cuda_graphs,
    )
    return NodeState(
        settings=settings,
        redis=connection,
        engine=engine,
        registry=registry,
        publisher=Publisher(connection),
        node_name=node_name,
    )


def create_app(settings: NodeSettings | None = None) -> FastAPI:
    """The node app; the model loads in the lifespan, so creating the app is cheap."""
    settings = settings or get_node_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(build_state, settings)
        app.state.node = state
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(task(state), name=f"{task.__module__}.{task.__name__}")
            for task in BACKGROUND_TASKS
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await run_in_threadpool(state.engine.close, settings.node_drain_seconds)
            state.redis.close()

    app = FastAPI(
        title="regime3 node",
        summary="OpenAI-compatible inference, model registry, hot swaps.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.node_max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    return app
