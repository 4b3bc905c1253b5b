"""Resuming a file: the cursor each checkpoint records, an audit ledger of trained examples,
and, after a crash, the cut job requeued at the front of its queue."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from bus.events import JobQueued
from bus.keys import TRAIN_QUEUES
from bus.publish import Publisher
from services.trainer.dataset_reader import DataCursor
from services.trainer.manifest import JobCursor
from services.trainer.validate import ExampleId

log = logging.getLogger(__name__)

# A failed job is resumed only when it failed by being cut short, never for a real error
# (that would requeue a broken file on every restart).
INTERRUPTIONS = ("AbandonedJobError", "TrainingInterrupted")


@dataclass
class FileProgress:
    """Progress through the file being trained: what a checkpoint's cursor records."""

    job_id: str | None
    digest: str  # the file's sha256
    name: str
    total_examples: int  # from validation, times epochs: the base of the step estimate
    epoch: int = 0
    file_step: int = 0
    examples_done: int = 0
    cursor: DataCursor = field(default_factory=DataCursor)  # after the last optimizer step
    saved_at: int = -1  # the global step of the last checkpoint written for this file

    def job_cursor(self) -> JobCursor:
        return JobCursor(
            job_id=self.job_id,
            dataset_sha256=self.digest,
            byte_offset=self.cursor.offset,
            line=self.cursor.line,
            rows_done=self.cursor.rows_done,
            examples_done=self.examples_done,
        )


def append_ledger(path: Path, job_id: str | None, step: int, examples: Sequence[ExampleId]) -> None:
    """Append the example ids of one optimizer step, fsync'd so a kill -9 cannot lose a line
    that was written: the evidence that no example is skipped across a crash."""
    record = {
        "job": job_id,
        "step": step,
        "examples": [[e.line, e.offset, e.part] for e in examples],
    }
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def forget_dead_workers(connection: redis.Redis) -> list[str]:
    """Unregister train workers of this host whose process is gone (a kill -9 leaves them
    listed until their key expires). Returns their names."""
    host = socket.gethostname()
    dead = []
    for worker in Worker.all(connection=connection):
        if worker.hostname != host or not set(worker.queue_names()) & set(TRAIN_QUEUES):
            continue
        if worker.pid and not _alive(int(worker.pid)):
            worker.register_death()  # type: ignore[no-untyped-call]
            dead.append(worker.name)
            log.warning("unregistered dead worker %s (pid %s)", worker.name, worker.pid)
    return dead


def _interrupted(job: Job) -> bool:
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    return any(name in text for name in INTERRUPTIONS)


def _to_front(connection: redis.Redis, job: Job) -> Job | None:
    """Put a job that did not finish back at the front of its queue; None when it must not."""
    status = job.get_status()
    queue = Queue(job.origin, connection=connection)
    if status == JobStatus.FAILED:
        if not _interrupted(job):
            log.info("job %s failed for a reason of its own; not resumed", job.id)
            return None
        job = FailedJobRegistry(job.origin, connection=connection).requeue(job, at_front=True)
    elif status == JobStatus.STARTED:
        StartedJobRegistry(job.origin, connection=connection).remove_executions(job)
        job = queue.enqueue_job(job, at_front=True)
    elif status == JobStatus.QUEUED:
        queue.remove(job)
        job = queue.enqueue_job(job, at_front=True)
    else:
        return None  # finished, canceled, deferred or scheduled: not ours to resume
    Publisher(connection).publish(
        JobQueued(
            job_id=job.id,
            queue=queue.name,
            func=job.func_name,
            description=job.description,
            priority=queue.name.removeprefix("train-"),
        )
    )
    log.info("job %s requeued at the front of %s", job.id, queue.name)
    return job


def requeue_unfinished(connection: redis.Redis, cursor: JobCursor | None) -> list[Job]:
    """Put every train job a dead trainer left unfinished back at the front of its queue:
    the job the newest checkpoint's `cursor` names (resumed from that cursor: the caller sets
    `Trainer.pending_resume`), and any train job still marked started (cut before its first
    checkpoint: it restarts from the top of its file). Returns the jobs requeued.

    Call it at startup, before the worker takes jobs. Assumes one trainer per Redis: a train
    job still marked started belongs to the trainer that died, whatever its heartbeat says.
    """
    ids: list[str] = []
    for name in TRAIN_QUEUES:
        ids.extend(StartedJobRegistry(name, connection=connection).get_job_ids(cleanup=False))
    if cursor is not None and cursor.job_id is not None:
        ids.insert(0, cursor.job_id)
    requeued: list[Job] = []
    # Reversed, so after each goes to the front the checkpoint's job is first in line.
    for job_id in reversed(list(dict.fromkeys(ids))):
        try:
            job = Job.fetch(job_id, connection=connection)
        except NoSuchJobError:
            log.warning("job %s is gone from RQ; not resumed", job_id)
            continue
        moved = _to_front(connection, job)
        if moved is not None:
            requeued.append(moved)
    return requeued
