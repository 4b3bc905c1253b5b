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
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from bus.events import JobQueued
from bus.keys import TRAIN_QUEUES
from bus.publish import Publisher
from checkpoints.manifest import JobCursor
from services.trainer.checkpoint import CheckpointInfo
from services.trainer.dataset_reader import DataCursor
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


def resume_point(name: str, cursor: JobCursor, examples: int | None = None) -> str:
    """Where a job resumes, in words: examples done, and where reading starts again.

    The byte offset alone misleads: it is the start of the pack buffer the cut step came
    from (line 1 of a file that fits one buffer), and `rows_done` of its rows are skipped.
    """
    of = f" of {examples}" if examples is not None else ""
    skipped = (
        f", skipping the {cursor.rows_done} packed rows already trained from there"
        if cursor.rows_done
        else ""
    )
    return (
        f"resuming {name} after {cursor.examples_done}{of} examples: reading again from line "
        f"{cursor.line} (byte {cursor.byte_offset}){skipped}"
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


def forget_executions(connection: redis.Redis, job: Job) -> int:
    """Take a dead worker's executions of `job` out of its started registry; returns how many.

    Not RQ's `remove_executions`: it fetches each execution record, and RQ keeps a job's list
    of executions longer than the records themselves, so a trainer restarted a minute or two
    after a kill -9 got `ValueError: Execution … not found in Redis` and crash-looped. Here the
    registry entries are matched by job id, and list entries whose record expired are dropped
    so RQ's own later calls (delete, cancel) cannot trip on them either.
    """
    started = StartedJobRegistry(job.origin, connection=connection)
    mine = [
        entry
        for entry in connection.zrange(started.key, 0, -1)
        if started.parse_job_id(entry) == job.id
    ]
    if mine:
        connection.zrem(started.key, *mine)
    listed = job.execution_registry
    for raw in connection.zrange(listed.key, 0, -1):
        execution_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        record = Execution(id=execution_id, job_id=job.id, connection=connection)
        if not connection.exists(record.key):
            connection.zrem(listed.key, raw)
    return len(mine)


def _to_front(connection: redis.Redis, job: Job, *, lost: bool = False) -> Job | None:
    """Put a job that did not finish back at the front of its queue; None when it must not.

    `lost`: the job's training lived in a checkpoint that was quarantined, so even a job RQ
    calls finished is trained again (from the surviving checkpoint's cursor, or the top).
    """
    status = job.get_status()
    queue = Queue(job.origin, connection=connection)
    if status == JobStatus.FINISHED and lost:
        FinishedJobRegistry(job.origin, connection=connection).remove(job)
        job = queue.enqueue_job(job, at_front=True)
    elif status == JobStatus.FAILED:
        if not _interrupted(job):
            log.info("job %s failed for a reason of its own; not resumed", job.id)
            return None
        job = FailedJobRegistry(job.origin, connection=connection).requeue(job, at_front=True)
    elif status == JobStatus.STARTED:
        forget_executions(connection, job)
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
    connection: redis.Redis, cursor: JobCursor | None, *, lost: Sequence[str] = ()
) -> list[Job]:
    """Put every train job a dead trainer left unfinished back at the front of its queue:
    the job the newest checkpoint's `cursor` names (resumed from that cursor: the caller sets
    `Trainer.pending_resume`), and any train job still marked started (cut before its first
    checkpoint: it restarts from the top of its file). Returns the jobs requeued.

    `lost` (oldest first) are jobs whose training lived only in quarantined checkpoints
    (`lost_jobs`): requeued even when RQ calls them finished, after the cursor's job.

    Call it at startup, before the worker takes jobs. Assumes one trainer per Redis: a train
    job still marked started belongs to the trainer that died, whatever its heartbeat says.
    """
    ids: list[str] = list(lost)
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
        moved = _to_front(connection, job, lost=job_id in lost)
        if moved is not None:
            requeued.append(moved)
    return requeued


def lost_jobs(set_aside: Sequence[CheckpointInfo]) -> list[str]:
    """Jobs named by quarantined checkpoints' cursors, oldest first: their training is lost."""
    ids = [
        info.cursor.job_id
        for info in sorted(set_aside, key=lambda info: info.order)
        if info.cursor is not None and info.cursor.job_id is not None
    ]
    return list(dict.fromkeys(ids))


def lost_span_message(
    set_aside: Sequence[CheckpointInfo], loaded: str | None, loaded_step: int, requeued: list[Job]
) -> str:
    """What a quarantine cost and what was done about it, for the alert and the log."""
    newest = max(info.step for info in set_aside)
    names = ", ".join(info.id for info in sorted(set_aside, key=lambda info: info.order))
    again = (
        "requeued at the front to train again: "
        + ", ".join(f"{job.id} ({job.kwargs.get('name', job.description)})" for job in requeued)
        if requeued
        else "no job could be named to requeue"
    )
    return (
        f"checkpoint(s) {names} failed verification and were moved aside (.corrupt-*); "
        f"training resumed from {loaded or 'the base model'} at step {loaded_step}, so steps "
        f"{loaded_step + 1}-{newest} are lost; {again}. A file trained in that span without a "
        "checkpoint of its own is not named here: requeue it (regime3 enqueue) if it was"
    )
