"""GET /jobs on a running node: pending, running, done and failed jobs with their times."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from rq.queue import Queue

from tests.rig.node import RunningNode

REPO = Path(__file__).resolve().parents[2]


def worker(redis_url: str, node: RunningNode) -> subprocess.Popen[bytes]:
    env = {**os.environ, "R3_REDIS_URL": redis_url, "R3_NODE_URL": node.url}
    return subprocess.Popen(
        [sys.executable, "-m", "services.node.worker", "--burst"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def jobs(node: RunningNode) -> dict[str, Any]:
    response = httpx.get(f"{node.url}/jobs", timeout=30)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def by_id(listing: dict[str, Any], state: str) -> dict[str, dict[str, Any]]:
    return {j["id"]: j for j in listing[state]}


def test_jobs_lists_every_state_with_times(
    node: RunningNode, r: redis.Redis, redis_url: str
) -> None:
    normal = Queue("node-normal", connection=r)
    ok = normal.enqueue_call("math.sqrt", args=(16,))
    bad = normal.enqueue_call("math.sqrt", args=(-1,))
    assert worker(redis_url, node).wait(timeout=120) == 0
    listing = jobs(node)
    assert listing["queues"] == ["node-high", "node-normal", "node-low"]
    done, failed = by_id(listing, "done")[ok.id], by_id(listing, "failed")[bad.id]
    assert done["func"] == "math.sqrt" and done["queue"] == "node-normal"
    assert failed["error"] == "ValueError: math domain error"
    for job in (done, failed):
        enqueued, started, ended = (
            datetime.fromisoformat(job[k]) for k in ("enqueued_at", "started_at", "ended_at")
        )
        assert enqueued <= started <= ended
        assert job["duration_seconds"] >= 0
    # A job running on node-high holds the worker; the node-low one waits, pending.
    sleeper = Queue("node-high", connection=r).enqueue_call("time.sleep", args=(4,), timeout=60)
    waiting = Queue("node-low", connection=r).enqueue_call("math.sqrt", args=(1,))
    proc = worker(redis_url, node)
    try:
        deadline = time.monotonic() + 60
        while True:
            listing = jobs(node)
            if sleeper.id in by_id(listing, "running"):
                break
            assert time.monotonic() < deadline, f"the sleeper never showed as running: {listing}"
            time.sleep(0.2)
        running = by_id(listing, "running")[sleeper.id]
        assert running["started_at"] is not None and running["ended_at"] is None
        pending = by_id(listing, "pending")[waiting.id]
        assert pending["queue"] == "node-low" and pending["started_at"] is None
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    listing = jobs(node)
    assert {sleeper.id, waiting.id, ok.id} <= set(by_id(listing, "done"))
    assert listing["pending"] == [] and listing["running"] == []
    assert len(jobs_limited := httpx.get(f"{node.url}/jobs?limit=1").json()["done"]) <= 3
    assert all(j["state"] == "done" for j in jobs_limited)
    assert httpx.get(f"{node.url}/jobs?limit=0").status_code == 400  # a 4xx with the reason
