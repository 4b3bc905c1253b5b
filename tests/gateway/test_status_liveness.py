"""A trainer that stopped beating is shown crashed, not training forever (status and /metrics)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis

from bus import queues
from bus.keys import heartbeat_key
from bus.liveness import STALE_AFTER_SECONDS, status_age_seconds
from bus.status import StatusStore, TrainingStatus
from bus.worker import LongJobWorker
from tests.gateway.rig import Gateway


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def shown(gateway: Gateway) -> str:
    payload = httpx.get(gateway.url + "/status/training_status.json", timeout=5).json()
    return str(payload["status"])


def test_a_trainer_whose_heartbeat_stopped_is_shown_crashed_within_the_bound(
    gateway: Gateway, r: redis.Redis
) -> None:
    # What a kill -9 leaves: "training", and the last word older than the bound.
    StatusStore(r).update(status="training", current_step=7, timestamp=ago(STALE_AFTER_SECONDS + 5))
    assert shown(gateway) == "crashed"
    history = httpx.get(gateway.url + "/api/history", timeout=5).json()
    assert history["status"]["status"] == "crashed"  # the dashboard's status at load
    m = gateway.metrics()
    assert m['r3_training_status{status="crashed"}'] == 1
    assert m['r3_training_status{status="training"}'] == 0 and m["r3_training_stale"] == 1
    # A live heartbeat (a long step, a long validation) keeps it training.
    r.set(heartbeat_key("trainer", "some-host"), "now", ex=30)
    assert shown(gateway) == "training" and gateway.metrics()["r3_training_stale"] == 0
    r.delete(heartbeat_key("trainer", "some-host"))
    # So does a recent word from the trainer.
    StatusStore(r).update(timestamp=ago(1))
    assert shown(gateway) == "training"


def test_the_trainers_worker_beats_while_a_job_runs(r: redis.Redis) -> None:
    job = queues.enqueue(r, "tests.faults.jobs.trainer_heartbeat", kind="train")
    LongJobWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    value = job.return_value(refresh=True)
    assert value is not None and value.endswith(job.id)
    [key] = list(r.scan_iter(match=heartbeat_key("trainer", "*")))
    assert 0 < r.ttl(key) <= 32  # it expires by itself a few beats after the trainer dies


def test_the_trainers_naive_local_timestamp_is_read_as_local_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The trainer stamps its status with datetime.now() (local, no offset).
    monkeypatch.setenv("TZ", "JST-9")  # POSIX form: no tzdata needed
    time.tzset()
    try:
        stamp = (datetime.now() - timedelta(seconds=60)).isoformat(timespec="seconds")
        age = status_age_seconds(TrainingStatus(status="training", timestamp=stamp))
        assert age is not None and 59 <= age <= 62
    finally:
        monkeypatch.undo()
        time.tzset()
