from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from bus import keys, queues
from bus.broadcast import EARLIEST, BroadcastReader
from bus.worker import EventWorker, LongJobWorker


def job_events(r: redis.Redis) -> list:
    return [d.event for d in BroadcastReader(r, {keys.STREAM_JOBS: EARLIEST}).read(0)]


def test_a_worker_takes_high_before_normal_before_low(r: redis.Redis) -> None:
    # Queued in the worst order: low first, high last.
    for priority in ("low", "normal", "high", "low", "high"):
        queues.enqueue(
            r,
            "tests.fixtures.jobs.record",
            kind="train",
            priority=priority,
            kwargs={"tag": priority},
        )
    assert queues.depths(r)["train-low"] == 2
    EventWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    assert [t.decode() for t in r.lrange("test:ran", 0, -1)] == [
        "high",
        "high",
        "normal",
        "low",
        "low",
    ]
    assert all(n == 0 for n in queues.depths(r).values())


def test_node_queues_are_separate_from_train_queues(r: redis.Redis) -> None:
    queues.enqueue(
        r, "tests.fixtures.jobs.record", kind="node", priority="low", kwargs={"tag": "node"}
    )
    EventWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    assert r.llen("test:ran") == 0
    EventWorker(queues.queues(r, "node"), connection=r).work(burst=True)
    assert r.lrange("test:ran", 0, -1) == [b"node"]


def test_unknown_priority_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="use one of high, normal, low"):
        queues.queue_name("train", "urgent")


def test_job_lifecycle_events(r: redis.Redis) -> None:
    ok = queues.enqueue(r, "tests.fixtures.jobs.record", kind="node", kwargs={"tag": "x"})
    bad = queues.enqueue(
        r,
        "tests.fixtures.jobs.fail",
        kind="node",
        kwargs={"message": "line 7: not JSON\ntraceback noise"},
    )
    EventWorker(queues.queues(r, "node"), connection=r).work(burst=True)
    seen = [(e.type, e.job_id) for e in job_events(r)]
    assert seen == [
        ("job.queued", ok.id),
        ("job.queued", bad.id),
        ("job.started", ok.id),
        ("job.finished", ok.id),
        ("job.started", bad.id),
        ("job.failed", bad.id),
    ]
    events = job_events(r)
    assert events[3].result == {"tag": "x"}
    assert events[5].reason == "line 7: not JSON" and events[5].exc_type == "RuntimeError"
    # RQ keeps the failure with its reason in the failed registry too.
    assert bad.id in FailedJobRegistry("node-normal", connection=r).get_job_ids()


def test_progress_events_from_inside_a_job(r: redis.Redis) -> None:
    queues.enqueue(r, "tests.fixtures.jobs.slow", kind="node", kwargs={"seconds": 1.0})
    EventWorker(queues.queues(r, "node"), connection=r).work(burst=True)
    progress = [(e.done, e.total) for e in job_events(r) if e.type == "job.progress"]
    assert progress == [(1, 2), (2, 2)]


@pytest.mark.slow
def test_a_job_longer_than_the_worker_ttls_is_never_abandoned(r: redis.Redis) -> None:
    """RQ's in-process worker would let its TTLs lapse during a long job; ours heartbeats."""
    job = queues.enqueue(
        r, "tests.fixtures.jobs.slow", kind="train", kwargs={"seconds": 8.0, "tag": "long"}
    )
    worker = EventWorker(queues.queues(r, "train"), connection=r, worker_ttl=3)
    worker.job_monitoring_interval = 1  # so the job's registry TTL is 5 s, the job takes 8 s
    started = StartedJobRegistry("train-normal", connection=r)
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            # What any other worker's maintenance does: fail jobs whose TTL lapsed.
            started.cleanup()
            samples.append((r.exists(worker.key), job.id in started.get_job_ids()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        worker.work(burst=True)  # RQ installs signal handlers: main thread only
    finally:
        done.set()
        watcher.join()
    # The worker's key (TTL 3 s) never lapsed, and the job was never called abandoned.
    assert len(samples) >= 10
    assert all(exists == 1 and running for exists, running in samples[:-2]), samples
    assert job.id not in FailedJobRegistry("train-normal", connection=r).get_job_ids()
    assert Job.fetch(job.id, connection=r).get_status() == JobStatus.FINISHED
    assert r.lrange("test:ran", 0, -1) == [b"long"]


def rq_enqueue(redis_url: str, *args: str) -> None:
    """RQ's own CLI, as a user runs it."""
    rq = str(Path(sys.executable).parent / "rq")
    subprocess.run([rq, "enqueue", "--url", redis_url, *args], check=True, capture_output=True)


def test_rq_enqueue_by_dotted_path_reaches_a_worker(r: redis.Redis, redis_url: str) -> None:
    """What docs/jobs.md shows: `rq enqueue --queue train-high <dotted path> key=value`."""
    rq_enqueue(redis_url, "--queue", "train-high", "tests.fixtures.jobs.record", "tag=from-cli")
    assert queues.depths(r)["train-high"] == 1
    EventWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    assert r.lrange("test:ran", 0, -1) == [b"from-cli"]


@pytest.mark.parametrize(
    ("worker_class", "finished"), [(EventWorker, False), (LongJobWorker, True)]
)
def test_long_job_worker_never_kills_a_job_for_time(
    r: redis.Redis, redis_url: str, worker_class: type[EventWorker], finished: bool
) -> None:
    rq_enqueue(
        redis_url,
        "--queue",
        "train-normal",
        "--timeout",
        "1",
        "tests.fixtures.jobs.slow",
        "seconds:=2",
        "tag=long",
    )
    worker_class(queues.queues(r, "train"), connection=r).work(burst=True)
    assert (r.lrange("test:ran", 0, -1) == [b"long"]) is finished
