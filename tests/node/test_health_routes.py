"""GET /healthz on a running node, and `regime3 health node` against it."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner

from services.cli.main import cli
from tests.rig.node import RunningNode


def test_healthz_names_the_model_and_needs_no_token(
    node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = httpx.get(f"{node.url}/healthz", timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["model"] == node.state.engine.active.version
    monkeypatch.setenv("R3_NODE_PORT", str(node.settings.node_port))
    result = CliRunner().invoke(cli, ["health", "node"])
    assert result.exit_code == 0, result.output
