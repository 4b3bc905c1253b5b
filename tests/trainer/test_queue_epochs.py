"""The whole queue's ETA counts each waiting file as many times as it will be trained."""

from __future__ import annotations

import redis

from services.feeder.backlog import Waiting
from services.trainer.metrics import QueueProgress, StepFigures


def figures(done: int, total: int) -> StepFigures:
    fields = {name: None for name in StepFigures.__dataclass_fields__}
    fields.update(current_file="a.jsonl", files_taken=1, examples_done=done, total_examples=total)
    return StepFigures(**fields)  # type: ignore[arg-type]


def test_waiting_files_count_every_epoch(r: redis.Redis) -> None:
    for epochs in (1, 3):
        queue = QueueProgress(r, epochs)
        queue.add_step(figures(10, 20 * epochs), tokens=1000)  # 100 tokens an example
        queue.waiting = {"train-normal": Waiting(files=1, examples=50)}
        out = queue.fields(figures(10, 20 * epochs), tokens_per_sec=100.0)
        assert out["queue_backlog"]["train-normal"] == {
            "files": 1,
            "examples": 50 * epochs,
            "tokens": 5000 * epochs,
        }
        file_left = (20 * epochs - 10) * 100
        assert out["queue_eta_seconds"] == (file_left + 5000 * epochs) / 100.0
