"""What waits in the training queues, by priority: files and examples (lines), counted once.

Read by the feeder (its low and high marks) and by the trainer (the queue's progress and ETA
on the dashboard), so both count the same thing the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job

from bus import keys, queues


class LineCounter:
    """Lines of a queued file, counted once per sha256 (files in the store never change)."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    def lines(self, path: str, sha256: str | None) -> int:
        key = sha256 or path
        if key not in self._known:
            try:
                with Path(path).open("rb") as handle:
                    self._known[key] = sum(1 for raw in handle if raw.strip())
            except OSError:
                return 0  # gone (trained and removed, or on another host): nothing waits
        return self._known[key]


@dataclass(frozen=True)
class Waiting:
    """The training files queued at one priority."""

    files: int = 0
    examples: int = 0  # non-empty lines: the examples before validation rejects any


def queued_jobs(connection: redis.Redis, names: tuple[str, ...]) -> list[Job]:
    found: list[Job] = []
    for name in names:
        queue = Queue(name, connection=connection)
        found.extend(j for j in queue.get_jobs() if j is not None)
    return found


def training_backlog(connection: redis.Redis, counter: LineCounter) -> dict[str, Waiting]:
    """priority → the training files waiting in train-<priority> (the running one excluded)."""
    out: dict[str, Waiting] = {}
    for priority in keys.PRIORITIES:
        files = examples = 0
        for job in queued_jobs(connection, (keys.train_queue(priority),)):
            if job.func_name == queues.TRAIN_FILE and "path" in job.kwargs:
                files += 1
                examples += counter.lines(job.kwargs["path"], job.kwargs.get("sha256"))
        out[priority] = Waiting(files, examples)
    return out
