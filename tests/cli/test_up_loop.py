"""The whole loop through `regime3 up`, shortened: every service on one machine, the demo
seeded, a checkpoint hot-swapped on the node, fixed validation scored, the feeder's
generation job done by the node, and the dashboard served — what a user sees in the first
minutes, with smaller numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bus import keys
from bus.encoding import as_str
from tests.rig.ports import free_port

pytestmark = pytest.mark.slow


def _events(conn: redis.Redis, stream: str) -> list[dict[str, str]]:
    return [
        {as_str(k): as_str(v) for k, v in fields.items()}
        for _, fields in conn.xrange(stream, "-", "+")
    ]


def _wait(what: str, check: Callable[[], Any], up: subprocess.Popen[str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.poll() is None, f"regime3 up exited while waiting for {what}"
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_regime3_up_runs_the_loop(tmp_path: Path) -> None:
    redis_port, gateway_port, node_port = free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("R3_")  # a developer's own settings must not leak in
    }
    env.update(
        R3_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        R3_DATA_DIR=str(tmp_path / "data"),
        R3_GATEWAY_PORT=str(gateway_port),
        R3_NODE_PORT=str(node_port),
        PYTHONUNBUFFERED="1",
        # The demo, shortened: fewer examples, earlier checkpoints and evaluations.
        R3_DEMO_SEED_EXAMPLES="600",
        R3_DEMO_SHARD_EXAMPLES="600",
        R3_SAVE_STEPS="20",
        R3_EVAL_STEPS="20",
        R3_EVAL_EXAMPLES="16",
        # The feeder in miniature: the seeded file is taken by the trainer at once, so the
        # queue is "low" from the start and the feeder asks the node for small shards.
        R3_FEEDER_LOW_MARK="5",
        R3_FEEDER_MAX_QUEUE="9",
        R3_FEEDER_JOB_EXAMPLES="4",
        R3_FEEDER_INTERVAL_SECONDS="2",
        R3_GEN_MAX_TOKENS="64",
    )
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    conn = redis.Redis(port=redis_port)
    try:
        _wait("the private Redis", lambda: _ping(conn), up, 30)
        # Loss is reported every step.
        _wait("training steps", lambda: conn.xlen(keys.STREAM_TRAINING) > 5, up, 120)
        # A checkpoint is pulled by the node through the gateway (the token up generated)
        # and hot-swapped in.
        swap = _wait(
            "a checkpoint swapped in on the node",
            lambda: next(
                (
                    e
                    for e in _events(conn, keys.STREAM_MODELS)
                    if e["type"] == "model.swapped" and e["model_id"].startswith("step-")
                ),
                None,
            ),
            up,
            240,
        )
        assert float(swap["load_seconds"]) >= 0 and int(swap["bytes"]) > 0
        # Fixed validation is scored and lands in the status the old viewer reads.
        _wait("an eval.result", lambda: conn.xlen(keys.STREAM_EVAL) > 0, up, 120)
        status = httpx.get(f"http://127.0.0.1:{gateway_port}/status/training_status.json").json()
        assert status["fixed_eval_em"] is not None and status["current_step"] > 0
        # The feeder's generation job ran on the node-worker, and its shard, uploaded to the
        # gateway, is queued for training on train-low.
        _wait(
            "the node's generate job",
            lambda: any(
                e["type"] == "job.finished" and e.get("func", "").endswith("jobs.generate")
                for e in _events(conn, keys.STREAM_JOBS)
            ),
            up,
            240,
        )
        _wait(
            "the node's shard queued on train-low",
            lambda: any(
                e["type"] == "job.queued" and e["queue"] == "train-low"
                for e in _events(conn, keys.STREAM_JOBS)
            ),
            up,
            30,
        )
        page = httpx.get(f"http://127.0.0.1:{gateway_port}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
    except AssertionError as failure:
        log.flush()
        tail = (tmp_path / "up.log").read_text()[-6000:]
        raise AssertionError(f"{failure}\n--- regime3 up's output, last lines:\n{tail}") from None
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)
        log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


def _ping(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.RedisError:
        return False
