"""The feeder: queue node generate jobs while the training queues run low, pause when full.

Each look counts the examples waiting in the train queues (the lines of each queued file) and
those promised by generate jobs not finished yet (queued or running on a node). Once that is
below the low mark it queues one generate job on node-normal per look until one more would
pass the maximum queue size; then generation pauses until the count falls below the low mark.
The job's mode follows the curriculum: a transitional run moves English → canonical → encoded
(codec.modes.TransitionalSchedule) over the seeded and then the generated examples.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq.job import Job
from rq.registry import StartedJobRegistry

from bus import keys, queues
from bus.encoding import as_str
from bus.publish import Publisher
from codec.modes import Mode, TransitionalSchedule
from services.feeder.backlog import LineCounter, queued_jobs
from services.feeder.config import FeederSettings

log = logging.getLogger(__name__)

# The field of keys.FEEDER_STATUS that `regime3 up` sets to its seed id once the demo data is
# queued (or seeding failed): the feeder's go-ahead when R3_FEEDER_AWAIT_SEED is set.
SEEDED_FIELD = "seeded"
# The field where the demo's seeding writes how many examples it queued: the feeder's
# curriculum position starts after them (generated examples follow the seeded ones).
SEEDED_EXAMPLES_FIELD = "seeded_examples"


@dataclass(frozen=True)
class Decision:
    """One look at the queues and what the feeder did about it."""

    queued_examples: int  # lines of the files waiting in train-high/normal/low
    pending_generation: int  # examples promised by unfinished generate jobs
    # "generate", "paused" (full), "enough" (above the low mark), "awaiting_seed" (`regime3 up`
    # is still queuing the demo data: an empty queue now says nothing)
    action: str
    mode: str | None = None  # the mode of the queued generate job
    job_id: str | None = None
    generated_total: int = 0  # examples asked of the node so far (the curriculum position)


def _jobs(connection: redis.Redis, names: tuple[str, ...]) -> list[Job]:
    return queued_jobs(connection, names)


def _started(connection: redis.Redis, names: tuple[str, ...]) -> list[Job]:
    found: list[Job] = []
    for name in names:
        ids = StartedJobRegistry(name, connection=connection).get_job_ids()
        found.extend(j for j in Job.fetch_many(ids, connection=connection) if j is not None)
    return found


class Feeder:
    """Decides and queues; `step()` is one look (the loop in __main__ repeats it)."""

    def __init__(self, connection: redis.Redis, settings: FeederSettings) -> None:
        self.connection = connection
        self.settings = settings
        self.publisher = Publisher(connection)
        self.counter = LineCounter()
        self.rng = random.Random(0)
        stored = connection.hget(keys.FEEDER_STATUS, "generated_total")
        self.generated_total = int(stored) if stored else 0
        # Low/high water marks: below the low mark it fills (one job a look) up to the
        # maximum, then pauses until the trainer has taken the queue below the low mark again.
        self.filling = False

    def queued_examples(self) -> int:
        total = 0
        for job in _jobs(self.connection, keys.TRAIN_QUEUES):
            if job.func_name == queues.TRAIN_FILE and "path" in job.kwargs:
                total += self.counter.lines(job.kwargs["path"], job.kwargs.get("sha256"))
        return total

    def pending_generation(self) -> int:
        jobs = _jobs(self.connection, keys.NODE_QUEUES) + _started(
            self.connection, keys.NODE_QUEUES
        )
        return sum(
            int(j.kwargs.get("count", 0)) for j in jobs if j.func_name == queues.NODE_GENERATE
        )

    def mode_now(self) -> Mode:
        mode = Mode(self.settings.demo_mode)
        if mode is not Mode.TRANSITIONAL:
            return mode
        schedule = TransitionalSchedule(total=self.settings.curriculum_total)
        seeded = self.connection.hget(keys.FEEDER_STATUS, SEEDED_EXAMPLES_FIELD)
        return schedule.mode_for(int(seeded or 0) + self.generated_total, self.rng)

    def seeding(self) -> bool:
        """True while `regime3 up` has not finished seeding the demo data it announced."""
        expected = self.settings.feeder_await_seed
        if not expected:
            return False
        done = self.connection.hget(keys.FEEDER_STATUS, SEEDED_FIELD)
        return done is None or as_str(done) != expected

    def step(self) -> Decision:
        s = self.settings
        if self.seeding():
            decision = Decision(0, 0, "awaiting_seed", generated_total=self.generated_total)
            self._record(decision)
            return decision
        waiting = self.queued_examples()
        pending = self.pending_generation()
        have = waiting + pending
        if have < s.feeder_low_mark:
            self.filling = True
        if self.filling and have + s.feeder_job_examples > s.feeder_max_queue:
            self.filling = False  # full: wait until the trainer takes it below the low mark
            decision = Decision(waiting, pending, "paused", generated_total=self.generated_total)
        elif not self.filling:
            decision = Decision(waiting, pending, "enough", generated_total=self.generated_total)
        else:
            mode = self.mode_now()
            job = queues.enqueue(
                self.connection,
                queues.NODE_GENERATE,
                kind="node",
                priority="normal",
                kwargs={
                    "domain": s.demo_domain,
                    "count": s.feeder_job_examples,
                    "difficulty": s.demo_difficulty,
                    "mode": mode.value,
                    # Generated data trains after what users queue (DESIGN: new shard ->
                    # train-low), and still counts as waiting for the marks above.
                    "priority": "low",
                },
                description=(
                    f"generate {s.feeder_job_examples} {s.demo_domain} d{s.demo_difficulty} "
                    f"{mode.value} (feeder: {have} examples waiting, low mark "
                    f"{s.feeder_low_mark})"
                ),
                publisher=self.publisher,
            )
            self.generated_total += s.feeder_job_examples
            decision = Decision(
                waiting, pending, "generate", mode.value, job.id, self.generated_total
            )
        self._record(decision)
        return decision

    def _record(self, decision: Decision) -> None:
        fields: dict[Any, Any] = {  # redis-py's mapping type is invariant in its keys
            k: (json.dumps(v) if v is None else str(v)) for k, v in asdict(decision).items()
        }
        fields["time"] = datetime.now(UTC).isoformat()
        self.connection.hset(keys.FEEDER_STATUS, mapping=fields)
