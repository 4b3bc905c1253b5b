"""The train job function (`services.trainer.jobs.train_file`): thin, on the process's Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rq import get_current_job

from bus.connections import RIDE_OUT_SECONDS, connect
from services.trainer.loop import Trainer

_trainer: Trainer | None = None


def set_trainer(trainer: Trainer | None) -> None:
    """Make `trainer` the one jobs in this process train with (python -m services.trainer)."""
    global _trainer
    _trainer = trainer


def get_trainer() -> Trainer:
    """The process's Trainer, built on first use when a plain `rq worker` runs the job.

    Under a forking `rq worker` each job would rebuild it; run `python -m services.trainer`
    (an in-process worker) so model and optimizer stay in memory across jobs.
    """
    global _trainer
    if _trainer is None:
        _trainer = Trainer(connect(ride_out=RIDE_OUT_SECONDS))
    return _trainer


def train_file(path: str, name: str | None = None, sha256: str | None = None) -> dict[str, Any]:
    """Train on one JSONL file; returns a summary (steps, examples, final loss)."""
    job = get_current_job()
    return get_trainer().train_file(
        Path(path), job_id=job.id if job is not None else None, sha256=sha256, name=name
    )
