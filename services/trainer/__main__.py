"""`python -m services.trainer`: build the Trainer once, resume a cut job, then work the queues.

Under `torchrun --nproc-per-node N` the same command trains on N GPUs: rank 0 works the queues
as above; the other ranks follow its orders (services.trainer.distributed).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

import redis
from rq.job import Job

from bus import queues
from bus.connections import connect_waiting
from bus.events import Alert
from bus.worker import LongJobWorker
from services.trainer import jobs
from services.trainer.distributed import Group, peer_failure
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


def build_trainer(group: Group | None, make: Callable[[], Trainer]) -> Trainer:
    """`make()` the Trainer; under torchrun the lead first (it alone may set a damaged
    checkpoint aside), then the others from what it left, then DDP over all of them."""
    if group is None:
        return make()
    if not group.lead:
        group.barrier()
    trainer = make()
    if group.lead:
        group.barrier()
    trainer.data_parallel()
    return trainer


def follow(trainer: Trainer, group: Group) -> None:
    """A rank other than the lead: train each file the lead orders until it says stop.

    SIGTERM/SIGINT while training ask for a stop that every rank agrees on at the end of the
    step (the lead checkpoints); while idle they end the process at once: it holds no state.
    """
    while (order := group.receive_order()) is not None:
        stop = lambda signum, frame: trainer.request_stop()  # noqa: E731
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            trainer.follow_file(order)
        except Exception as exc:
            if peer_failure(exc):
                raise  # a rank died: this one ends too, and torchrun ends the group
            # The lead met the same error on the same rows (bad data fails every rank alike).
            log.exception("rank %d: training %s failed", group.rank, order.name)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    group = Group.start()
    conn = connect_waiting()
    trainer = build_trainer(group, lambda: Trainer(conn, group=group))
    try:
        if group is not None and not group.lead:
            follow(trainer, group)
            return
        jobs.set_trainer(trainer)
        resume_cut_jobs(conn, trainer)
        worker = TrainerWorker(queues.queues(conn, "train"), connection=conn)
        worker.trainer = trainer
        worker.work()
        if group is not None:
            group.send_order(None)  # the others exit with the lead
    finally:
        if group is not None:
            group.close()


if __name__ == "__main__":
    main()
