"""Fixtures of the jobs tests: the worker's settings pointed at a test node, a real gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.node.config import get_node_settings
from tests.node.conftest import RunningNode
from tests.node.swap_fixtures import NODE_TOKEN, serve_app

MAX_TOKENS = 16


@pytest.fixture
def jobs_env(
    node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningNode]:
    """The worker's settings point at the test node; answers kept short for a CPU."""
    monkeypatch.setenv("R3_NODE_URL", node.url)
    monkeypatch.setenv("R3_DATA_DIR", str(tmp_path / "node-data"))
    monkeypatch.setenv("R3_EVAL_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_GEN_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_NODE_NAME", node.state.node_name)  # the registry jobs read steps from
    get_node_settings.cache_clear()
    yield node
    get_node_settings.cache_clear()


@pytest.fixture
def gateway_url(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real gateway (dataset uploads into its store, queued on train-*)."""
    from services.gateway.app import create_app
    from services.gateway.config import GatewaySettings

    app = create_app(
        GatewaySettings(node_token=NODE_TOKEN, admin_token=None, data_dir=tmp_path / "gw")
    )
    with serve_app(app) as url:
        monkeypatch.setenv("R3_GATEWAY_URL", url)
        monkeypatch.setenv("R3_NODE_TOKEN", NODE_TOKEN)
        get_node_settings.cache_clear()
        yield url
