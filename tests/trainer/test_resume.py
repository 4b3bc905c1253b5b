"""Kill -9 the trainer mid-file: the restarted trainer resumes the same job from its cursor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from bus import queues
from bus.worker import EventWorker, LongJobWorker
from checkpoints.durable import sha256_file
from checkpoints.manifest import JobCursor
from services.trainer.checkpoint import CheckpointStore
from services.trainer.dataset_reader import read_lines
from services.trainer.resume import forget_dead_workers, requeue_unfinished

ROOT = Path(__file__).resolve().parents[2]
SAVE_STEPS = 3


def trainer_env(redis_url: str, model_dir: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update(
        {
            "R3_REDIS_URL": redis_url,
            "R3_MODEL": str(model_dir),
            "R3_DATA_DIR": str(tmp / "data"),
            "R3_CHECKPOINT_DIR": str(tmp / "ckpt"),
            "R3_MIN_FREE_DISK_BYTES": "0",
            "R3_TRAIN_LEDGER": str(tmp / "ledger.jsonl"),
            "R3_SAVE_STEPS": str(SAVE_STEPS),
            "R3_MAX_LENGTH": "384",
            "R3_MICRO_BATCH_TOKENS": "384",
            "R3_TOKENS_PER_STEP": "384",
            "R3_PACK_BUFFER_EXAMPLES": "8",
            "R3_EVAL_STEPS": "100000",
            "R3_LAYER_MONITOR_STEPS": "0",
            "R3_ACTIVATION_CHECKPOINTING": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    return env


def start_trainer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.trainer"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def ledger_steps(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path, job: Job) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        result = job.latest_result() if job.get_status(refresh=True) == JobStatus.FAILED else None
        if result is not None and "TrainingInterrupted" not in (result.exc_string or ""):
            raise AssertionError(f"the job failed: {result.exc_string}\nlog:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; trainer log:\n{log.read_text()}")
        time.sleep(0.05)


def test_kill_9_then_sigterm_mid_file_resume_the_job_with_nothing_skipped(
    r: redis.Redis,
    redis_url: str,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
) -> None:
    data = write_jsonl(codec_rows[:60], "resume.jsonl")
    env = trainer_env(redis_url, embedded_dir, tmp_path)
    log = tmp_path / "trainer.log"
    ledger = tmp_path / "ledger.jsonl"
    job = queues.enqueue(
        r,
        queues.TRAIN_FILE,
        kind="train",
        kwargs={"path": str(data), "name": data.name, "sha256": sha256_file(data)},
    )

    first = start_trainer(env, log)
    try:
        # Past two checkpoints and into the third interval, then no chance to clean up.
        wait_for("7 steps", lambda: len(ledger_steps(ledger)) >= 2 * SAVE_STEPS + 1, 90, log, job)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    killed_at = len(ledger_steps(ledger))
    assert job.get_status(refresh=True) == JobStatus.STARTED  # the dead worker's, as RQ sees it
    assert CheckpointStore(tmp_path / "ckpt").list(), "no checkpoint before the kill"

    second = start_trainer(env, log)
    try:
        # SIGTERM mid-file: the step in hand finishes, is checkpointed, and the process exits.
        wait_for("2 more steps", lambda: len(ledger_steps(ledger)) >= killed_at + 2, 90, log, job)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    finally:
        second.kill()
    stopped_at = ledger_steps(ledger)[-1]["step"]
    newest = CheckpointStore(tmp_path / "ckpt").list()[-1]
    assert newest.step == stopped_at and newest.cursor is not None
    # A requested stop is not a failure: the job waits at the front of its queue.
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert FailedJobRegistry("train-normal", connection=r).get_job_ids() == []

    third = start_trainer(env, log)
    try:
        wait_for(
            "the job to finish",
            lambda: Job.fetch(job.id, connection=r).get_status() == JobStatus.FINISHED,
            90,
            log,
            job,
        )
        third.send_signal(signal.SIGTERM)  # idle now: a clean, prompt exit
        assert third.wait(30) == 0, log.read_text()
    finally:
        third.kill()

    steps = ledger_steps(ledger)
    assert len(steps) > killed_at and {s["job"] for s in steps} == {job.id}
    seen = Counter(tuple(e) for s in steps for e in s["examples"])
    expected = {(raw.line, raw.offset, 0) for raw in read_lines(data) if not raw.blank}
    assert set(seen) == expected  # nothing skipped, nothing invented
    most_per_step = max(len(s["examples"]) for s in steps)
    reworked = sum(n - 1 for n in seen.values())
    assert reworked <= SAVE_STEPS * most_per_step
    numbers = [s["step"] for s in steps]
    restarted = numbers[killed_at]  # the restarted trainer's first step follows its checkpoint
    assert restarted <= killed_at and (restarted - 1) % SAVE_STEPS == 0
    # After the SIGTERM nothing is repeated: the steps just go on.
    assert numbers[killed_at:] == list(range(restarted, restarted + len(steps) - killed_at))
    assert not StartedJobRegistry("train-normal", connection=r).get_job_ids(cleanup=False)
    assert "resumes at byte" in log.read_text()


def test_only_jobs_cut_short_are_requeued_and_to_the_front(r: redis.Redis) -> None:
    broken = queues.enqueue(
        r, "tests.fixtures.jobs.fail", kind="train", kwargs={"message": "a real error"}
    )
    done = queues.enqueue(r, "tests.fixtures.jobs.record", kind="train", kwargs={"tag": "a"})
    EventWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    waiting = queues.enqueue(r, "tests.fixtures.jobs.record", kind="train", kwargs={"tag": "b"})
    queues.enqueue(r, "tests.fixtures.jobs.record", kind="train", kwargs={"tag": "c"})

    def cursor(job: Job) -> JobCursor:
        return JobCursor(job_id=job.id, dataset_sha256="0" * 64, byte_offset=10)

    assert requeue_unfinished(r, cursor(broken)) == []  # failed for a reason of its own
    assert requeue_unfinished(r, cursor(done)) == []
    assert [j.id for j in requeue_unfinished(r, cursor(waiting))] == [waiting.id]
    assert Queue("train-normal", connection=r).job_ids[0] == waiting.id


def test_a_dead_workers_registration_is_removed(r: redis.Redis) -> None:
    dead = LongJobWorker(queues.queues(r, "train"), connection=r, name="dead-trainer")
    dead.register_birth()
    r.hset(dead.key, "pid", str(_exited_pid()))
    alive = LongJobWorker(queues.queues(r, "train"), connection=r, name="live-trainer")
    alive.register_birth()
    assert forget_dead_workers(r) == ["dead-trainer"]
    assert {w.name for w in Worker.all(connection=r)} == {"live-trainer"}


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _taken_by_a_worker_that_dies(r: redis.Redis) -> Job:
    """A train job in the state a killed worker leaves: started, its execution registered."""
    worker = LongJobWorker(queues.queues(r, "train"), connection=r)
    worker.register_birth()
    taken = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert taken is not None
    worker.prepare_execution(taken[0])
    worker.prepare_job_execution(taken[0])
    return taken[0]


def test_a_dead_workers_started_and_abandoned_jobs_are_requeued(r: redis.Redis) -> None:
    first = queues.enqueue(r, "tests.fixtures.jobs.record", kind="train", kwargs={"tag": "1"})
    second = queues.enqueue(r, "tests.fixtures.jobs.record", kind="train", kwargs={"tag": "2"})
    assert _taken_by_a_worker_that_dies(r).id == first.id
    assert _taken_by_a_worker_that_dies(r).id == second.id
    # The first one's heartbeat ran out: RQ calls it abandoned and fails it.
    registry = StartedJobRegistry("train-normal", connection=r)
    entries = registry.get_job_and_execution_ids(cleanup=False)
    r.zadd(registry.key, {f"{j}:{e}": 0 for j, e in entries if j == first.id})
    registry.cleanup(timestamp=1)
    assert first.get_status(refresh=True) == JobStatus.FAILED
    assert second.get_status(refresh=True) == JobStatus.STARTED

    cursor = JobCursor(job_id=first.id, dataset_sha256="0" * 64, byte_offset=10)
    requeued = requeue_unfinished(r, cursor)
    assert {j.id for j in requeued} == {first.id, second.id}
    # The checkpoint's job first in line, the one cut before any checkpoint next.
    assert Queue("train-normal", connection=r).job_ids == [first.id, second.id]
    assert not registry.get_job_ids(cleanup=False)
    EventWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    assert [t.decode() for t in r.lrange("test:ran", 0, -1)] == ["1", "2"]


def test_a_restart_long_after_a_kill_resumes_though_rq_expired_the_execution(
    r: redis.Redis,
) -> None:
    # 70-150 s after a kill -9, RQ's execution record has expired but the job's list of
    # executions (and the started registry) still name it: RQ's remove_executions raised
    # "ValueError: Execution … not found in Redis" and the trainer crash-looped.
    job = queues.enqueue(r, "tests.fixtures.jobs.record", kind="train", kwargs={"tag": "late"})
    assert _taken_by_a_worker_that_dies(r).id == job.id
    records = list(r.scan_iter("rq:execution:*"))
    assert records
    r.delete(*records)
    assert r.zcard(f"rq:executions:{job.id}") == 1  # the list outlived the record

    requeued = requeue_unfinished(r, None)
    assert [j.id for j in requeued] == [job.id]
    assert not StartedJobRegistry("train-normal", connection=r).get_job_ids(cleanup=False)
    assert r.zcard(f"rq:executions:{job.id}") == 0
    EventWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert [t.decode() for t in r.lrange("test:ran", 0, -1)] == ["late"]
    assert requeue_unfinished(r, None) == []  # and a second restart finds nothing to do


def lineage(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger's steps that the final weights went through: a step number seen again
    (a restart from an older checkpoint) replaces every step from that number on."""
    kept: list[dict[str, Any]] = []
    for step in steps:
        while kept and kept[-1]["step"] >= step["step"]:
            kept.pop()
        kept.append(step)
    return kept


def test_a_quarantined_checkpoints_training_is_requeued_and_its_id_never_reused(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    from bus import keys
    from services.trainer import jobs
    from services.trainer.__main__ import resume_cut_jobs
    from tests.rig.files import flip_byte
    from tests.rig.trainer import events, make_trainer

    ledger = tmp_path / "ledger.jsonl"
    options = {"eval_steps": 1000, "layer_monitor_steps": 0, "save_steps": 2}
    data = write_jsonl(codec_rows[:20], "lost.jsonl")
    job = queues.enqueue(
        r,
        queues.TRAIN_FILE,
        kind="train",
        kwargs={"path": str(data), "name": data.name, "sha256": sha256_file(data)},
    )
    try:
        jobs.set_trainer(make_trainer(r, embedded_dir, tmp_path, ledger=ledger, **options))
        LongJobWorker(queues.queues(r, "train"), connection=r).work(burst=True)
        assert job.get_status(refresh=True) == JobStatus.FINISHED
        store = CheckpointStore(tmp_path / "ckpt")
        saved = store.list()
        assert len(saved) >= 3
        # The two newest are corrupt on disk when the trainer starts again.
        for info in saved[-2:]:
            flip_byte(info.path / "model.safetensors", 200)
        announced = {info.id for info in saved}

        trainer = make_trainer(r, embedded_dir, tmp_path, ledger=ledger, **options)
        assert trainer.resumed_from == saved[-3].id
        jobs.set_trainer(trainer)
        assert [j.id for j in resume_cut_jobs(r, trainer)] == [job.id]
        [alert] = [a for a in events(r, keys.STREAM_ALERTS) if a.code == "checkpoint_lost"]
        assert saved[-1].id in alert.message and job.id in alert.message
        assert "lost.jsonl" in alert.message
        LongJobWorker(queues.queues(r, "train"), connection=r).work(burst=True)
    finally:
        jobs.set_trainer(None)

    assert job.get_status(refresh=True) == JobStatus.FINISHED
    after = CheckpointStore(tmp_path / "ckpt").list()
    fresh = [info.id for info in after if info.step > saved[-3].step]
    assert fresh and not set(fresh) & announced  # no announced id is ever reused
    kept = lineage(ledger_steps(ledger))
    trained = Counter(tuple(e) for s in kept for e in s["examples"])
    expected = {(raw.line, raw.offset, 0) for raw in read_lines(data) if not raw.blank}
    assert set(trained) == expected and set(trained.values()) == {1}  # each exactly once


def test_a_redis_restart_mid_job_pauses_the_trainer_and_the_job_finishes(
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
) -> None:
    from tests.faults.redis_server import KillableRedis

    server = KillableRedis(tmp_path / "redis").start()
    try:
        r = server.client()
        data = write_jsonl(codec_rows[:40], "ride-out.jsonl")
        env = {**trainer_env(server.url, embedded_dir, tmp_path), "PYTHONFAULTHANDLER": "1"}
        log = tmp_path / "trainer.log"
        ledger = tmp_path / "ledger.jsonl"
        job = queues.enqueue(
            r,
            queues.TRAIN_FILE,
            kind="train",
            kwargs={"path": str(data), "name": data.name, "sha256": sha256_file(data)},
        )
        trainer = start_trainer(env, log)
        try:
            wait_for("3 steps", lambda: len(ledger_steps(ledger)) >= 3, 90, log, job)
            server.kill()  # Redis gone mid-job, for a few seconds
            time.sleep(4)
            assert trainer.poll() is None, log.read_text()
            server.start()
            wait_for(
                "the job to finish",
                lambda: job.get_status(refresh=True) == JobStatus.FINISHED,
                120,
                log,
                job,
            )
            assert trainer.poll() is None  # rode it out: still the same process
            trainer.send_signal(signal.SIGTERM)
            try:
                trainer.wait(30)
            except subprocess.TimeoutExpired:
                trainer.send_signal(signal.SIGABRT)
                time.sleep(2)
                raise AssertionError(log.read_text()[-6000:]) from None
        finally:
            trainer.kill()
        steps = ledger_steps(ledger)
        seen = Counter(tuple(e) for s in steps for e in s["examples"])
        expected = {(raw.line, raw.offset, 0) for raw in read_lines(data) if not raw.blank}
        assert set(seen) == expected and set(seen.values()) == {1}  # nothing lost or redone
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
        assert FailedJobRegistry("train-normal", connection=r).get_job_ids() == []
    finally:
        server.kill()
