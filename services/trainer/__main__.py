"""`python -m services.trainer`: build the Trainer once, resume a cut job, then work the queues."""

from __future__ import annotations

import logging
from types import FrameType

import redis
from rq.job import Job

from bus import queues
from bus.connections import connect_waiting
from bus.events import Alert
from bus.worker import LongJobWorker
from services.trainer import jobs
from services.trainer.loop import Trainer
from services.trainer.resume import (
    forget_dead_workers,
    lost_jobs,
    lost_span_message,
    requeue_unfinished,
)

log = logging.getLogger("services.trainer")


class TrainerWorker(LongJobWorker):
    """SIGTERM/SIGINT also ask the Trainer to stop after its current optimizer step (with a
    checkpoint), instead of RQ's warm shutdown waiting for a whole file to finish."""

    trainer: Trainer | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.trainer is not None:
            self.trainer.request_stop()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def resume_cut_jobs(conn: redis.Redis, trainer: Trainer) -> list[Job]:
    """At startup: requeue what a dead trainer left unfinished, and the jobs whose training
    lived only in a checkpoint that failed verification (with an alert naming the span)."""
    forget_dead_workers(conn)
    cursor = trainer.latest_cursor
    set_aside = trainer.store.set_aside
    lost = lost_jobs(set_aside)
    # Even a cursor at the end of its file counts: killed between the last checkpoint and
    # RQ's bookkeeping, the job resumes at the end, trains nothing and is marked finished.
    requeued = requeue_unfinished(conn, cursor, lost=lost)
    if set_aside:
        again = [job for job in requeued if job.id in lost]
        message = lost_span_message(set_aside, trainer.resumed_from, trainer.global_step, again)
        log.error("%s", message)
        trainer.publisher.publish(
            Alert(level="error", source="trainer", code="checkpoint_lost", message=message)
        )
    if cursor is not None and any(job.id == cursor.job_id for job in requeued):
        trainer.pending_resume = cursor
        log.info(
            "job %s resumes at byte %d (line %d) of its file, %d examples done, %d packed "
            "rows of that point already trained",
            cursor.job_id,
            cursor.byte_offset,
            cursor.line,
            cursor.examples_done,
            cursor.rows_done,
        )
    return requeued


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    conn = connect_waiting()
    trainer = Trainer(conn)
    jobs.set_trainer(trainer)
    resume_cut_jobs(conn, trainer)
    worker = TrainerWorker(queues.queues(conn, "train"), connection=conn)
    worker.trainer = trainer
    worker.work()


if __name__ == "__main__":
    main()
