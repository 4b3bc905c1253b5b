"""What the Reporter publishes for the dashboard: queue progress, status changes, history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from bus import history, keys, queues
from bus.broadcast import EARLIEST, BroadcastReader
from bus.events import TrainStatus, TrainStep
from services.trainer.metrics import Reporter, StepFigures


def _events(r: redis.Redis) -> list[object]:
    return [d.event for d in BroadcastReader(r, {keys.STREAM_TRAINING: EARLIEST}).read(0)]


def _queue(r: redis.Redis, path: Path, lines: int, priority: str) -> None:
    path.write_text("".join(json.dumps({"messages": [], "n": i}) + "\n" for i in range(lines)))
    queues.enqueue(
        r,
        queues.TRAIN_FILE,
        kind="train",
        priority=priority,
        kwargs={"path": str(path), "name": path.name, "sha256": path.name},
    )


def _figures(step: int, examples_done: int) -> StepFigures:
    return StepFigures(
        step=step,
        epoch=1,
        loss=1.5,
        learning_rate=1e-4,
        grad_norm=1.0,
        entropy=2.0,
        loss_tokens=500,
        rows=4,
        rows_per_batch=4,
        file_step=step,
        examples_done=examples_done,
        total_examples=100,
        files_taken=1,
        current_file="now.jsonl",
    )


def test_the_queue_s_progress_status_changes_and_history(r: redis.Redis, tmp_path: Path) -> None:
    _queue(r, tmp_path / "a.jsonl", 40, "high")
    _queue(r, tmp_path / "b.jsonl", 200, "low")
    _queue(r, tmp_path / "c.jsonl", 60, "low")
    report = Reporter(r)
    report.set_status("idle", model_name="tiny")
    for step in (1, 2):
        report.throughput.start()
        report.throughput.steps.append((1.0, 1000))  # 1,000 tokens in 1 s, 10 examples a step
        report.throughput._started = None
        report.step(_figures(step, 10 * step))
    events = _events(r)
    statuses = [e for e in events if isinstance(e, TrainStatus)]
    # idle (with its model), then training on the first step, once.
    assert [(s.status, s.model_name) for s in statuses] == [("idle", "tiny"), ("training", "tiny")]
    last = [e for e in events if isinstance(e, TrainStep)][-1]
    assert last.queue_backlog == {
        "high": {"files": 1, "examples": 40, "tokens": 4000},
        "normal": {"files": 0, "examples": 0, "tokens": 0},
        "low": {"files": 2, "examples": 260, "tokens": 26000},
    }
    # 80 examples left of this file and 300 queued, 100 tokens each, at 1,000 tokens/s.
    assert last.queue_eta_seconds == pytest.approx((80 + 300) * 100 / 1000)
    assert (last.file_examples_done, last.file_examples_total) == (20, 100)
    window = history.read(r, "default", points=100)
    assert [b.last_step for b in window.buckets] == [1, 2]
    assert window.buckets[-1].values["loss"] == [1.5, 1.5, 1.5]
