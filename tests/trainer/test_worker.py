"""A real LongJobWorker runs train jobs high first, on one Trainer, past a failing file."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry

from bus import keys, queues
from bus.status import StatusStore
from bus.worker import LongJobWorker
from checkpoints.durable import sha256_file
from services.trainer import jobs
from services.trainer.__main__ import TrainerWorker
from services.trainer.resume import requeue_unfinished
from tests.rig.trainer import events, make_trainer


@pytest.fixture
def no_process_trainer() -> Iterator[None]:
    yield
    jobs.set_trainer(None)


def enqueue(r: redis.Redis, path: Path, priority: str) -> Job:
    return queues.enqueue(
        r,
        queues.TRAIN_FILE,
        kind="train",
        priority=priority,
        kwargs={"path": str(path), "name": path.name, "sha256": sha256_file(path)},
    )


def test_the_worker_trains_files_in_priority_order_on_one_trainer(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
    no_process_trainer: None,
) -> None:
    trainer = make_trainer(r, embedded_dir, tmp_path, eval_steps=1000, layer_monitor_steps=0)
    model = trainer.model
    jobs.set_trainer(trainer)
    normal = write_jsonl(codec_rows[:10], "normal.jsonl")
    bad = write_jsonl([*codec_rows[10:14], "{broken", '{"messages": "x"}'], "bad.jsonl")
    high = write_jsonl(codec_rows[20:30], "high.jsonl")
    # Queued in the worst order: the normal file first.
    normal_job = enqueue(r, normal, "normal")
    bad_job = enqueue(r, bad, "high")
    high_job = enqueue(r, high, "high")

    LongJobWorker(queues.queues(r, "train"), connection=r).work(burst=True)

    started = [e.job_id for e in events(r, keys.STREAM_JOBS) if e.type == "job.started"]
    assert started == [bad_job.id, high_job.id, normal_job.id]

    # The bad file failed before any step, with the first bad lines in RQ and on the bus.
    assert bad_job.get_status(refresh=True) == JobStatus.FAILED
    assert bad_job.id in FailedJobRegistry("train-high", connection=r)
    result = bad_job.latest_result()
    assert result is not None and "line 5: not valid JSON" in (result.exc_string or "")
    failed = [e for e in events(r, keys.STREAM_JOBS) if e.type == "job.failed"]
    assert len(failed) == 1 and failed[0].exc_type == "RejectThresholdError"
    assert "First bad lines: line 5" in failed[0].reason

    # The next jobs still ran, on the same model, with one step counter across files.
    first, second = high_job.return_value(), normal_job.return_value()
    assert high_job.get_status() == normal_job.get_status() == JobStatus.FINISHED
    assert first["file"] == "high.jsonl" and second["file"] == "normal.jsonl"
    assert second["global_step"] == first["global_step"] + second["steps"]
    assert jobs.get_trainer() is trainer and trainer.model is model
    steps = [e for e in events(r, keys.STREAM_TRAINING) if e.type == "train.step"]
    assert [e.current_step for e in steps] == list(range(1, second["global_step"] + 1))
    by_file = {e.current_file: e for e in steps}
    assert by_file["high.jsonl"].batch_queue_size == 1  # the normal file was waiting
    assert by_file["normal.jsonl"].batch_queue_size == 0
    assert by_file["normal.jsonl"].batch_number == 3  # the bad file was taken too


def test_a_requested_stop_is_not_a_failure_and_the_job_resumes_at_its_real_point(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
    no_process_trainer: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    trainer = make_trainer(
        r, embedded_dir, tmp_path, ledger=ledger, eval_steps=1000, layer_monitor_steps=0
    )
    jobs.set_trainer(trainer)
    data = write_jsonl(codec_rows[:24], "stop.jsonl")
    job = enqueue(r, data, "normal")
    worker = TrainerWorker(queues.queues(r, "train"), connection=r)
    worker.trainer = trainer
    forwards: list[int] = []

    def ctrl_c_on_third_forward(*_: Any) -> None:
        forwards.append(1)
        if len(forwards) == 3:
            worker.request_stop(signal.SIGINT, None)  # what Ctrl-C does

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    handle = trainer.model.get_decoder().register_forward_pre_hook(ctrl_c_on_third_forward)
    try:
        with caplog.at_level(logging.INFO):
            worker.work(burst=True)
    finally:
        handle.remove()
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])

    # Not a failure: no traceback in RQ's failed registry, the job queued again at the front.
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert FailedJobRegistry("train-normal", connection=r).get_job_ids() == []
    assert Queue("train-normal", connection=r).job_ids == [job.id]
    kinds = [e.type for e in events(r, keys.STREAM_JOBS) if e.job_id == job.id]
    assert kinds == ["job.queued", "job.started", "job.queued"]
    cursor = trainer.latest_cursor
    assert cursor is not None and cursor.job_id == job.id and cursor.examples_done > 0
    stopped_at = trainer.global_step
    assert StatusStore(r).read().status == "idle"

    # A restart: the job is resumed from the checkpoint's cursor, and the log says where.
    assert [j.id for j in requeue_unfinished(r, cursor)] == [job.id]
    trainer.pending_resume = cursor
    with caplog.at_level(logging.INFO):
        LongJobWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    said = [m for m in caplog.messages if "resuming stop.jsonl" in m]
    assert said == [
        f"job {job.id}: resuming stop.jsonl after {cursor.examples_done} of 24 examples: "
        f"reading again from line {cursor.line} (byte {cursor.byte_offset})"
        + (
            f", skipping the {cursor.rows_done} packed rows already trained from there"
            if cursor.rows_done
            else ""
        )
    ]

    assert job.get_status(refresh=True) == JobStatus.FINISHED
    steps = [json.loads(line) for line in ledger.read_text().splitlines()]
    seen = [tuple(e) for s in steps for e in s["examples"]]
    assert len(seen) == len(set(seen)) == 24  # the stop step was saved: no rework at all
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert stopped_at < len(steps)
