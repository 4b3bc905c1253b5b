"""`python -m services.trainer`: build the Trainer once, resume a cut job, then work the queues."""

from __future__ import annotations

import logging
from types import FrameType

from bus import queues
from bus.connections import connect
from bus.worker import LongJobWorker
from services.trainer import jobs
from services.trainer.loop import Trainer
from services.trainer.resume import forget_dead_workers, requeue_unfinished

log = logging.getLogger("services.trainer")


class TrainerWorker(LongJobWorker):
    """SIGTERM/SIGINT also ask the Trainer to stop after its current optimizer step (with a
    checkpoint), instead of RQ's warm shutdown waiting for a whole file to finish."""

    trainer: Trainer | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.trainer is not None:
            self.trainer.request_stop()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    conn = connect()
    trainer = Trainer(conn)
    jobs.set_trainer(trainer)
    forget_dead_workers(conn)
    cursor = trainer.latest_cursor
    # Even a cursor at the end of its file counts: killed between the last checkpoint and
    # RQ's bookkeeping, the job resumes at the end, trains nothing and is marked finished.
    requeued = requeue_unfinished(conn, cursor)
    if cursor is not None and any(job.id == cursor.job_id for job in requeued):
        trainer.pending_resume = cursor
        log.info("job %s resumes at byte %d of its file", cursor.job_id, cursor.byte_offset)
    worker = TrainerWorker(queues.queues(conn, "train"), connection=conn)
    worker.trainer = trainer
    worker.work()


if __name__ == "__main__":
    main()
