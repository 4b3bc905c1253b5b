"""The node's FastAPI app: wiring only (state at startup, routers, background tasks, limits)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool

from bus.connections import connect
from bus.publish import Publisher
from bus.settings import get_bus_settings
from services.model.loading import resolve_model_dir
from services.node.activation import entry_path
from services.node.config import NodeSettings, get_node_settings
from services.node.edge import BodyLimit, install_error_handlers
from services.node.engine import Engine, LoadedModel
from services.node.errors import ModelLoadError, RegistryError
from services.node.loading import load_for_serving, warm_up
from services.node.registry import Registry
from services.node.state import NodeState

log = logging.getLogger(__name__)

# ==== extension hooks =========================================================================
# Other helpers add ONE line each here ("module:attribute"), imported when the app is built.
# ROUTERS: an `APIRouter`. BACKGROUND_TASKS: `async def task(state: NodeState) -> None`, started
# after the model is loaded, running for the app's life, cancelled at shutdown (use
# asyncio.to_thread inside for blocking work).
ROUTERS: list[str] = [
    "services.node.openai_api:router",
    "services.node.registry_routes:router",
    "services.node.ops_routes:router",  # N2
    "services.node.jobs_routes:router",  # N3
    "services.node.scoring:router",  # N3
    "services.node.health_routes:router",  # lead: /healthz for compose and regime3 health
]
BACKGROUND_TASKS: list[str] = [
    "services.node.checkpoint_watcher:run",  # N2
    "services.node.ops:run",  # N2: telemetry and the power schedule
]
# ==== end of extension hooks ==================================================================

BackgroundTask = Callable[[NodeState], Coroutine[Any, Any, None]]


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


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
            asyncio.create_task(cast(BackgroundTask, _resolve(path))(state), name=path)
            for path in BACKGROUND_TASKS
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
    for path in ROUTERS:
        app.include_router(cast(APIRouter, _resolve(path)))
    return app
