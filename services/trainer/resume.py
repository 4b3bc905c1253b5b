"""After a crash: requeue, at the front, the unfinished job the newest checkpoint names."""

from __future__ import annotations

import logging
import os
import socket

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from bus.events import JobQueued
from bus.keys import TRAIN_QUEUES
from bus.publish import Publisher
from services.trainer.manifest import JobCursor

log = logging.getLogger(__name__)

# A failed job is resumed only when it failed by being cut short, never for a real error
# (that would requeue a broken file on every restart).
INTERRUPTIONS = ("AbandonedJobError", "TrainingInterrupted")


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


def requeue_unfinished(
    connection: redis.Redis, cursor: JobCursor | None, *, file_done: bool = False
) -> list[Job]:
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
    if cursor is not None and cursor.job_id is not None and not file_done:
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
