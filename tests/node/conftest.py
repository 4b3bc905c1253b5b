"""Node fixtures others reuse: a running node (real uvicorn, real Redis, embedded model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from services.model.config import get_model_settings
from services.node.app import create_app
from services.node.config import NodeSettings
from services.node.state import NodeState
from tests.conftest import free_port

ADMIN_TOKEN = "admin-secret-for-tests"


@dataclass
class RunningNode:
    """A node serving on a free port: its base URL, app, settings and live state."""

    url: str
    app: FastAPI
    settings: NodeSettings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> NodeState:
        return self.app.state.node  # type: ignore[no-any-return]

    @property
    def admin_headers(self) -> dict[str, str]:
        token = self.settings.admin_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_node(settings: NodeSettings, timeout: float = 60.0) -> RunningNode:
    """Start `create_app(settings)` under uvicorn in a thread; returns once it serves."""
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.node_port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-node", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the node did not start (its lifespan failed; see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the node did not start within {timeout} s")
        time.sleep(0.02)
    return RunningNode(f"http://127.0.0.1:{settings.node_port}", app, settings, server, thread)


@pytest.fixture
def node_settings_factory(
    redis_url: str, embedded_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., NodeSettings]:
    """Settings of a test node: CPU, the embedded model as default, a free port, a token.

    R3_MODEL points at the session's embedded model so nothing is built again; R3_REDIS_URL
    at the test's database (the `redis_url` fixture). Keyword arguments override fields.
    """
    monkeypatch.setenv("R3_MODEL", str(embedded_dir))
    get_model_settings.cache_clear()

    def make(**overrides: Any) -> NodeSettings:
        fields: dict[str, Any] = {
            "node_port": free_port(),
            "node_name": "test-node",
            "data_dir": tmp_path / "data",
            "node_device": "cpu",
            "admin_token": ADMIN_TOKEN,
            "node_batch_wait_ms": 20.0,
            **overrides,
        }
        return NodeSettings(**fields)

    return make


@pytest.fixture
def node_factory(
    node_settings_factory: Callable[..., NodeSettings],
) -> Iterator[Callable[..., RunningNode]]:
    """Start nodes with overridden settings (`node_factory(node_protect_reads=True)`)."""
    started: list[RunningNode] = []

    def make(**overrides: Any) -> RunningNode:
        node = start_node(node_settings_factory(**overrides))
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., RunningNode]) -> RunningNode:
    """A node with the default test settings, serving the embedded model."""
    return node_factory()
