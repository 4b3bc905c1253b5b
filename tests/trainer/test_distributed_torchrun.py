"""`torchrun --nproc-per-node 2 -m services.trainer` on CPU (gloo): kill -9 of either rank
mid-file ends the whole group, the job not failed; torchrun started again (as compose's
restart policy does) resumes it from the last checkpoint, nothing skipped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from rq.job import Job, JobStatus

from bus import queues
from checkpoints.durable import sha256_file
from services.trainer.checkpoint import CheckpointStore
from services.trainer.dataset_reader import read_lines
from tests.trainer.test_resume import SAVE_STEPS, ledger_steps, trainer_env, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def start_torchrun(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "services.trainer"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def rank_process(agent: subprocess.Popen[bytes], rank: int) -> psutil.Process:
    for child in psutil.Process(agent.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no process of rank {rank} under torchrun")


@pytest.mark.parametrize("killed", [1, 0], ids=["follower", "lead"])
def test_kill_9_of_a_rank_ends_the_group_and_the_job_resumes_with_nothing_skipped(
    killed: int,
    r: redis.Redis,
    redis_url: str,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
) -> None:
    data = write_jsonl(codec_rows[:60], "ranks.jsonl")
    env = trainer_env(redis_url, embedded_dir, tmp_path)
    env["R3_TOKENS_PER_STEP"] = "768"  # two rows a step: one micro-batch on each rank
    log = tmp_path / "torchrun.log"
    ledger = tmp_path / "ledger.jsonl"
    job = queues.enqueue(
        r,
        queues.TRAIN_FILE,
        kind="train",
        kwargs={"path": str(data), "name": data.name, "sha256": sha256_file(data)},
    )
    agent = start_torchrun(env, log)
    try:
        wait_for("7 steps", lambda: len(ledger_steps(ledger)) >= 2 * SAVE_STEPS + 1, 120, log, job)
        rank_process(agent, killed).send_signal(signal.SIGKILL)
        assert agent.wait(120) != 0  # the whole group ends
    finally:
        agent.kill()
    killed_at = len(ledger_steps(ledger))
    assert CheckpointStore(tmp_path / "ckpt").list(), "no checkpoint before the kill"
    # Not a failure of the job: it waits at the front of its queue.
    assert job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.STARTED)

    agent = start_torchrun(env, log)
    try:
        wait_for(
            "the job to finish",
            lambda: Job.fetch(job.id, connection=r).get_status() == JobStatus.FINISHED,
            180,
            log,
            job,
        )
        agent.send_signal(signal.SIGTERM)  # idle now: every rank exits
        agent.wait(60)
    finally:
        agent.kill()
        time.sleep(0.5)

    steps = ledger_steps(ledger)
    assert len(steps) > killed_at and {s["job"] for s in steps} == {job.id}
    seen = Counter(tuple(e) for s in steps for e in s["examples"])
    expected = {(raw.line, raw.offset, 0) for raw in read_lines(data) if not raw.blank}
    assert set(seen) == expected  # nothing skipped, nothing invented
    numbers = [s["step"] for s in steps]
    restarted = numbers[killed_at]  # the restarted group's first step follows a checkpoint
    assert restarted <= killed_at and (restarted - 1) % SAVE_STEPS == 0
    assert "resumes at byte" in log.read_text()
