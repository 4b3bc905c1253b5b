"""The feeder on real Redis and RQ queues: low mark, maximum, curriculum, the node job's call."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import redis
from rq import Queue

from bus import keys, queues
from codec.modes import Mode
from services.feeder.config import FeederSettings
from services.feeder.feeder import Feeder


def queue_file(r: redis.Redis, path: Path, lines: int) -> None:
    path.write_text("".join(json.dumps({"messages": [], "n": i}) + "\n" for i in range(lines)))
    queues.enqueue(
        r,
        queues.TRAIN_FILE,
        kind="train",
        kwargs={"path": str(path), "name": path.name, "sha256": path.name},
    )


def generate_jobs(r: redis.Redis) -> list:
    return [
        j
        for j in Queue("node-normal", connection=r).get_jobs()
        if j.func_name == queues.NODE_GENERATE
    ]


def test_fills_from_the_low_mark_to_the_maximum_then_pauses(r: redis.Redis, tmp_path: Path) -> None:
    settings = FeederSettings(
        data_dir=tmp_path,
        feeder_low_mark=500,
        feeder_max_queue=3000,
        feeder_job_examples=1000,
        demo_mode="canonical",
    )
    queue_file(r, tmp_path / "a.jsonl", 100)
    feeder = Feeder(r, settings)
    assert feeder.queued_examples() == 100

    first = feeder.step()  # 100 < 500: fill
    assert (first.action, first.queued_examples, first.pending_generation) == ("generate", 100, 0)
    second = feeder.step()  # 1100 waiting or promised: still filling, 2100 fits under 3000
    assert (second.action, second.pending_generation) == ("generate", 1000)
    third = feeder.step()  # 2100 + 1000 would pass 3000: full, pause
    assert (third.action, third.pending_generation) == ("paused", 2000)
    assert feeder.step().action == "enough"  # above the low mark and not filling
    jobs = generate_jobs(r)
    assert len(jobs) == 2
    assert jobs[0].kwargs == {
        "domain": "syllogism",
        "count": 1000,
        "difficulty": 1,
        "mode": "canonical",
        "priority": "low",
    }
    # The node's job function takes exactly these arguments.
    from services.node.worker import jobs as node_jobs

    inspect.signature(node_jobs.generate).bind(**jobs[0].kwargs)

    # The node took both jobs and the trainer the file: below the low mark, it fills again.
    for job in jobs:
        Queue("node-normal", connection=r).remove(job)
    for job in Queue("train-normal", connection=r).get_jobs():
        Queue("train-normal", connection=r).remove(job)
    assert feeder.step().action == "generate"
    status = r.hgetall(keys.FEEDER_STATUS)
    assert status[b"action"] == b"generate" and status[b"generated_total"] == b"3000"
    # A restarted feeder continues the curriculum where it was.
    assert Feeder(r, settings).generated_total == 3000


def test_the_curriculum_moves_from_english_to_encoded(r: redis.Redis, tmp_path: Path) -> None:
    settings = FeederSettings(
        data_dir=tmp_path,
        demo_mode="transitional",
        curriculum_examples=10_000,
        feeder_low_mark=500,
        feeder_max_queue=100_000,
        feeder_job_examples=500,
    )
    feeder = Feeder(r, settings)
    early = [feeder.mode_now() for _ in range(20)]
    assert set(early) == {Mode.ENGLISH}  # before 10 % of the curriculum: English only
    feeder.generated_total = 9_500
    late = [feeder.mode_now() for _ in range(20)]
    assert set(late) == {Mode.ENCODED}  # past 90 %: encoded only
    feeder.generated_total = 5_000
    middle = {feeder.mode_now() for _ in range(200)}
    assert Mode.CANONICAL in middle
    # The jobs it queues carry the mode of their position.
    feeder.generated_total = 0
    feeder.step()
    assert generate_jobs(r)[0].kwargs["mode"] == "english"


def test_marks_that_would_stall_generation_are_refused(tmp_path: Path) -> None:
    # Below the low mark one more job must fit under the maximum, or the feeder would pause
    # on every look while the queue stays low.
    with pytest.raises(ValueError, match="R3_FEEDER_JOB_EXAMPLES"):
        FeederSettings(
            data_dir=tmp_path, feeder_low_mark=500, feeder_max_queue=1000, feeder_job_examples=600
        )
    FeederSettings(
        data_dir=tmp_path, feeder_low_mark=400, feeder_max_queue=1000, feeder_job_examples=600
    )


def test_while_regime3_up_seeds_the_feeder_queues_no_generation(
    r: redis.Redis, tmp_path: Path
) -> None:
    from services.feeder.feeder import SEEDED_FIELD

    settings = FeederSettings(
        data_dir=tmp_path,
        feeder_low_mark=500,
        feeder_max_queue=3000,
        feeder_job_examples=1000,
        demo_mode="canonical",
        feeder_await_seed="up-1",
    )
    # A seed id of an earlier `regime3 up` is no go-ahead for this one.
    r.hset(keys.FEEDER_STATUS, SEEDED_FIELD, "up-0")
    feeder = Feeder(r, settings)
    # The queue is empty only because the seeding thread has not queued its files yet.
    assert feeder.step().action == "awaiting_seed"
    assert generate_jobs(r) == []
    assert r.hget(keys.FEEDER_STATUS, "action") == b"awaiting_seed"

    queue_file(r, tmp_path / "seed.jsonl", 2000)
    r.hset(keys.FEEDER_STATUS, SEEDED_FIELD, "up-1")  # what `regime3 up` writes when done
    assert feeder.step().action == "enough"  # 2000 seeded examples: above the low mark
    assert generate_jobs(r) == []
