"""`regime3 status` shows what the node really serves and a loss a human can read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis
from click.testing import CliRunner

from bus import keys
from bus.liveness import STALE_AFTER_SECONDS
from bus.status import StatusStore
from services.cli.main import cli


def invoke(*args: str) -> str:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False).output


def test_the_active_model_is_the_registry_s_and_the_loss_is_rounded(r: redis.Redis) -> None:
    StatusStore(r).update(status="training", current_step=7, loss=1.234567891234)
    # A node that reported telemetry, whose registry activated a checkpoint …
    r.sadd(keys.NODES, "node-3090")
    r.hset(keys.node_status_key("node-3090"), mapping={"version": "0.1"})
    r.set(keys.node_active_model_key("node-3090"), "step-00000400")
    # … and one whose registry is set but which has sent no telemetry yet.
    r.set(keys.node_active_model_key("node-b"), "base")
    text = invoke("status")
    assert "node-3090  active step-00000400" in text
    assert "node-b  active base" in text
    assert "loss 1.235 " in text and "1.234567" not in text
    data = json.loads(invoke("status", "--json"))
    assert data["nodes"]["node-3090"]["active_model"] == "step-00000400"


def test_a_node_without_an_active_model_says_so(r: redis.Redis) -> None:
    r.sadd(keys.NODES, "node-c")
    assert "node-c  active -" in invoke("status")


def test_a_trainer_that_stopped_beating_is_shown_crashed(r: redis.Redis) -> None:
    # What a kill -9 leaves in the hash: "training", last written long ago, no heartbeat.
    long_ago = (datetime.now(UTC) - timedelta(seconds=STALE_AFTER_SECONDS + 5)).isoformat()
    StatusStore(r).update(status="training", current_step=7, timestamp=long_ago)
    assert json.loads(invoke("status", "--json"))["training"]["status"] == "crashed"
    StatusStore(r).update(timestamp=datetime.now(UTC).isoformat())
    assert json.loads(invoke("status", "--json"))["training"]["status"] == "training"
