"""The six RQ queues (train-/node- × high/normal/low) and queuing a job on them."""

from __future__ import annotations

from typing import Any, Literal

import redis
from rq import Queue
from rq.job import Job

from bus import keys
from bus.events import JobQueued
from bus.publish import Publisher

Priority = Literal["high", "normal", "low"]
Kind = Literal["train", "node"]

# Job functions by dotted path, so `rq enqueue` and this module name the same thing.
TRAIN_FILE = "services.trainer.jobs.train_file"
NODE_EVALUATE = "services.node.worker.jobs.evaluate"
NODE_GENERATE = "services.node.worker.jobs.generate"


def queue_name(kind: Kind, priority: str) -> str:
    if priority not in keys.PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}: use one of {', '.join(keys.PRIORITIES)}")
    return keys.train_queue(priority) if kind == "train" else keys.node_queue(priority)


def queues(connection: redis.Redis, kind: Kind) -> list[Queue]:
    """The three queues of a kind, high first: the order a worker must listen in."""
    names = keys.TRAIN_QUEUES if kind == "train" else keys.NODE_QUEUES
    return [Queue(name, connection=connection) for name in names]


def depths(connection: redis.Redis) -> dict[str, int]:
    """Jobs waiting in each of the six queues (one round trip)."""
    names = keys.TRAIN_QUEUES + keys.NODE_QUEUES
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.llen(Queue(name, connection=connection).key)
    return dict(zip(names, pipe.execute(), strict=True))


def enqueue(
    connection: redis.Redis,
    func: str,
    *,
    kind: Kind,
    priority: str = "normal",
    kwargs: dict[str, Any] | None = None,
    description: str | None = None,
    job_timeout: int = -1,
    publisher: Publisher | None = None,
) -> Job:
    """Queue `func` (a dotted path) and announce it with a `job.queued` event.

    `job_timeout=-1` is RQ's "no limit": a training file may take hours.
    """
    name = queue_name(kind, priority)
    job = Queue(name, connection=connection).enqueue_call(
        func,
        kwargs=kwargs or {},
        timeout=job_timeout,
        description=description,
        result_ttl=7 * 86_400,
        failure_ttl=30 * 86_400,
    )
    (publisher or Publisher(connection)).publish(
        JobQueued.model_validate(
            {
                "job_id": job.id,
                "queue": name,
                "func": func,
                "description": description,
                "priority": priority,
            }
        )
    )
    return job
