"""History of weeks-long runs: bounded rollups at publish time, served downsampled."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
import redis

from bus import history, keys
from bus.history import BUCKETS_PER_LEVEL, LEVELS, HistoryWriter
from tests.gateway.rig import Gateway
from tests.gateway.week import WEEK_STEPS, loss_at, simulate_week

REPO = Path(__file__).resolve().parents[2]


def test_each_level_keeps_min_max_last_and_stays_bounded(r: redis.Redis) -> None:
    writer = HistoryWriter(r, "run-a")
    steps = 70_000
    for n in range(1, steps + 1):
        loss = 5.0 if n == 31_337 else 1.0 + (n % 7) / 10
        writer.add(n, 1_700_000_000 + n, {"loss": loss, "tps": 100.0}, write=False)
    writer.flush()
    for width in LEVELS:
        # Trimmed to the newest BUCKETS_PER_LEVEL buckets on every write.
        assert r.zcard(keys.history_key("run-a", width)) <= BUCKETS_PER_LEVEL
        assert 0 < r.ttl(keys.history_key("run-a", width)) <= keys.HISTORY_TTL_S
    # The finest level holds only the last 4,096 steps; 256 spans the whole run in 274.
    coarse = history.read(r, "run-a", points=1000)
    assert coarse.width == 256 and len(coarse.buckets) == steps // 256 + 1
    spike = next(b for b in coarse.buckets if b.first_step <= 31_337 <= b.last_step)
    assert spike.values["loss"][1] == 5.0  # the max survives
    assert spike.values["loss"][0] == 1.0
    last = coarse.buckets[-1]
    assert last.last_step == steps and last.values["loss"][2] == 1.0 + (steps % 7) / 10
    # A recent window reads from a finer level, a range the fine level no longer holds from
    # a coarser one.
    assert history.read(r, "run-a", first=69_000, last=70_000, points=2000).width == 1
    assert history.read(r, "run-a", first=30_000, last=31_000, points=1000).width == 16
    info = history.runs(r)["run-a"]
    assert (info["first_step"], info["last_step"]) == (1, steps)


def test_a_restarted_writer_continues_the_open_bucket_and_a_rewind_drops_the_rest(
    r: redis.Redis,
) -> None:
    first = HistoryWriter(r, "run-b")
    for n in range(1, 41):
        first.add(n, 1000.0 + n, {"loss": float(n)})
    # A new trainer process (same run) goes on from step 41: bucket 32..47 of width 16 keeps
    # the min of what the first process wrote.
    second = HistoryWriter(r, "run-b")
    for n in range(41, 51):
        second.add(n, 1000.0 + n, {"loss": 0.5})
    bucket = history.read(r, "run-b", first=32, last=47, points=1).buckets[0]
    assert (bucket.first_step, bucket.values["loss"]) == (32, [0.5, 40.0, 0.5])
    # Resumed from a checkpoint at step 20: what came after it is superseded.
    second.add(20, 2000.0, {"loss": 9.0})
    window = history.read(r, "run-b", points=1000)
    assert window.width == 1 and window.buckets[-1].last_step == 20
    assert window.buckets[-1].values["loss"] == [9.0, 9.0, 9.0]


def test_a_rewind_keeps_the_coarse_buckets_history_before_the_resumed_step(
    r: redis.Redis,
) -> None:
    writer = HistoryWriter(r, "run-c")
    for n in range(1, 301):
        writer.add(n, 1000.0 + n, {"loss": float(n)}, write=False)
    writer.flush()
    # Resumed from a checkpoint at step 290: steps 1..289 stay in every coarse bucket.
    writer.add(290, 2000.0, {"loss": 0.25})
    for width in (16, 256, 4096, 65536):
        members = r.zrangebyscore(keys.history_key("run-c", width), 0, "+inf")
        buckets = [history.Bucket.from_member(m) for m in members]
        assert buckets[0].first_step == 1, width
        assert buckets[-1].last_step == 290 and buckets[-1].values["loss"][2] == 0.25, width
    assert history.read(r, "run-c", first=1, last=290, points=1).buckets[0].first_step == 1


@pytest.mark.slow
def test_a_week_of_steps_is_served_downsampled_in_well_under_a_second(
    r: redis.Redis, gateway: Gateway
) -> None:
    wrote = simulate_week(r)
    assert r.xlen(keys.STREAM_TRAINING) < WEEK_STEPS  # the stream is trimmed: rollups needed
    began = time.perf_counter()
    response = httpx.get(f"{gateway.url}/api/history", params={"points": 1400}, timeout=10)
    served = time.perf_counter() - began
    body = response.json()
    assert response.status_code == 200, body
    assert body["run_id"] == "run-week"
    cols = body["buckets"]
    assert cols["s0"][0] == 1 and cols["s1"][-1] == WEEK_STEPS
    assert len(cols["s0"]) <= 1400
    assert cols["loss"][2][-1] == pytest.approx(loss_at(WEEK_STEPS))
    # The cursor replays only the newest training entries, the other streams from the start.
    assert body["cursor"].startswith("training:") and "eval:0-0" in body["cursor"]
    artifacts = Path(os.environ.get("R3_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
    (artifacts / "dashboard").mkdir(parents=True, exist_ok=True)
    (artifacts / "dashboard" / "history_week.json").write_text(
        json.dumps(
            {
                "steps": WEEK_STEPS,
                "write_s": wrote,
                "serve_s": served,
                "buckets": len(cols["s0"]),
                "width": body["width"],
                "bytes": len(response.content),
            },
            indent=2,
        )
    )
    assert served < 1.0, served
