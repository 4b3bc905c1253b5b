"""A simulated week of training written to Redis: ≥ 1M train.step events and their rollups.

What the trainer writes each step, in bulk: the events through the same Publisher (so the
stream is trimmed by its MAXLEN as in production) and the rollups through the same
HistoryWriter, one point a step, 0.6 s apart (a week ≈ 1M steps).
"""

from __future__ import annotations

import math
import time

import redis

from bus import events as ev
from bus.history import HistoryWriter
from bus.publish import Publisher

WEEK_STEPS = 1_008_000  # a week at 0.6 s a step
STEP_SECONDS = 0.6
CHUNK = 5_000


def loss_at(step: int) -> float:
    return 0.3 + 2.0 / (1 + step / 20_000) + 0.05 * math.sin(step / 3_000)


def simulate_week(
    connection: redis.Redis, *, run_id: str = "run-week", steps: int = WEEK_STEPS
) -> float:
    """Write `steps` steps ending now; returns the seconds it took."""
    began = time.perf_counter()
    publisher = Publisher(connection)
    writer = HistoryWriter(connection, run_id)
    start = time.time() - steps * STEP_SECONDS
    for first in range(1, steps + 1, CHUNK):
        batch = []
        for n in range(first, min(steps, first + CHUNK - 1) + 1):
            loss = loss_at(n)
            tps = 9000.0 + 500 * math.sin(n / 10_000)
            at = start + n * STEP_SECONDS
            writer.add(n, at, {"loss": loss, "ce": loss * 0.98, "tps": tps}, write=False)
            if n % 50 == 0:
                acc = min(100.0, n / steps * 120)
                writer.add(n, at, {"acc": acc, "acc20": acc}, write=False)
            batch.append(
                ev.TrainStep(
                    host="trainer-a",
                    run_id=run_id,
                    current_step=n,
                    total_steps=steps,
                    loss=loss,
                    learning_rate=2e-4,
                    streaming_ce=loss * 0.98,
                    tokens_per_sec=tps,
                    current_file="week.jsonl",
                )
            )
        publisher.publish_many(batch)
    writer.flush()
    return time.perf_counter() - began
