"""The trainer on 2 ranks (gloo, CPU, real Redis): the same step as one process, and a job
resumed across 2 → 1 → 2 ranks with nothing skipped.

The ranks are spawned processes joined the way torchrun joins them (RANK, WORLD_SIZE,
MASTER_ADDR/PORT); rank 0 trains through Trainer.train_file, rank 1 through the follower
loop `python -m services.trainer` runs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from torch.multiprocessing.spawn import spawn

from bus import keys
from checkpoints.settings import CheckpointSettings
from services.trainer.checkpoint import CheckpointStore
from services.trainer.config import TrainerSettings
from services.trainer.dataset_reader import read_lines
from services.trainer.loop import Trainer, TrainingInterrupted
from services.trainer.loop_config import LoopSettings
from services.trainer.metrics import StepFigures
from services.trainer.packing import file_rows
from tests.rig.ports import free_port
from tests.rig.trainer import SMALL, events

pytestmark = pytest.mark.slow  # two processes load torch and the model: ~20 s each test

WORLD = 2


def build(
    conn: redis.Redis, model_dir: Path, tmp: Path, settings: dict[str, Any], group: Any = None
) -> Trainer:
    ledger = tmp / "ledger.jsonl"
    return Trainer(
        conn,
        settings=TrainerSettings.model_validate({**SMALL, **settings}),
        loop_settings=LoopSettings(
            sample_max_new_tokens=8, rejects_dir=tmp / "rejects", train_ledger=ledger
        ),
        checkpoint_settings=CheckpointSettings(
            data_dir=tmp, checkpoint_dir=tmp / "ckpt", min_free_disk_bytes=0
        ),
        model_path=model_dir,
        device="cpu",
        group=group,
    )


def stop_after(trainer: Trainer, step: int) -> None:
    """Ask for a stop once global step `step` is reported (as a SIGTERM would)."""
    report = trainer.report.step

    def reported(figures: StepFigures) -> None:
        report(figures)
        if figures.step >= step:
            trainer.request_stop()

    trainer.report.step = reported  # type: ignore[method-assign,assignment]


def train(trainer: Trainer, path: Path, job: str, stop: int | None) -> dict[str, Any] | None:
    """Train `path` as job `job`, resuming from the newest checkpoint's cursor when it names
    the job (what resume_cut_jobs does at startup); None when stopped."""
    if trainer.latest_cursor is not None and trainer.latest_cursor.job_id == job:
        trainer.pending_resume = trainer.latest_cursor
    if stop is not None:
        stop_after(trainer, stop)
    try:
        return trainer.train_file(path, job_id=job, name=path.name)
    except TrainingInterrupted:
        return None


def rank_main(
    rank: int, port: int, redis_url: str, model_dir: Path, tmp: Path, job: dict[str, Any]
) -> None:
    """One rank: what `python -m services.trainer` does under torchrun, with the job given."""
    from services.trainer.__main__ import build_trainer, follow
    from services.trainer.distributed import Group

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    group = Group.start("cpu")
    assert group is not None
    conn = redis.Redis.from_url(redis_url)
    trainer = build_trainer(
        group, lambda: build(conn, model_dir, tmp, job["settings"], group=group)
    )
    if job.get("oom_rank") == rank:  # its first micro-batch runs out of memory, once
        assert trainer.ddp is not None
        # Patched on the class, in this rank's process only: DDP wraps the model again when
        # the file's codes grow the embedding, and the new wrapper calls the same forward.
        step_forward: Any = type(trainer.forward)
        inner = step_forward.__call__
        fired: list[bool] = []

        def forward(self: Any, batch: Any, **kwargs: Any) -> Any:
            if not fired:
                fired.append(True)
                raise torch.OutOfMemoryError("CUDA out of memory (a test's)")
            return inner(self, batch, **kwargs)

        step_forward.__call__ = forward
    result = None
    if group.lead:
        result = train(trainer, Path(job["path"]), job["job"], job["stop"])
        group.send_order(None)
    else:
        follow(trainer, group)
    torch.save(
        {
            "result": result,
            "weights": trainer.model.state_dict(),
            "step": trainer.global_step,
            "rows_per_batch": trainer.rows_per_batch,
        },
        tmp / f"rank{rank}.pt",
    )
    group.close()


def run_ranks(redis_url: str, model_dir: Path, tmp: Path, job: dict[str, Any]) -> list[Any]:
    for rank in range(WORLD):
        (tmp / f"rank{rank}.pt").unlink(missing_ok=True)
    args = (free_port(), redis_url, model_dir, tmp, job)
    spawn(rank_main, args=args, nprocs=WORLD, join=True)  # type: ignore[no-untyped-call]
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_one_step_on_two_ranks_is_the_one_process_step(
    r: redis.Redis,
    redis_url: str,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    # All rows in one step, one row per micro-batch: an odd count gives a rank one micro-batch
    # fewer, which it makes up with a weightless one.
    settings = {
        "micro_batch_tokens": 256,
        "tokens_per_step": 100_000,
        "eval_steps": 1000,
        "layer_monitor_steps": 0,
    }
    alone = build(r, embedded_dir, tmp_path / "alone", settings)
    for examples in range(20, 10, -1):  # the largest file that packs into an odd row count
        data = write_jsonl(codec_rows[:examples], "one-step.jsonl")
        if sum(1 for _ in file_rows(data, alone.chat, alone.settings)) % WORLD == 1:
            break
    expected = alone.train_file(data, job_id="one", name=data.name)
    assert expected["steps"] == 1

    ranks = run_ranks(
        redis_url,
        embedded_dir,
        tmp_path / "ranks",
        {"path": str(data), "job": "one", "stop": None, "settings": settings},
    )
    lead, other = ranks
    assert lead["result"]["steps"] == 1 and lead["step"] == other["step"] == 1
    # The file's encoded lines made every rank add the same codes (the embedding grew from
    # 6016 to 6156 rows) before the step, and DDP wrapped the grown model again.
    assert any(row["meta"]["mode"] == "encoded" for row in codec_rows[:examples])
    embedding = "model.embed_tokens.weight"
    assert lead["weights"][embedding].shape[0] == other["weights"][embedding].shape[0] == 6156
    assert lead["result"]["examples"] == expected["examples"] == examples
    assert lead["result"]["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)
    # The gradient too (Adam's first update hardly depends on the gradient's scale): the
    # step's rows split over ranks sum to the one-process gradient.
    steps = [e for e in events(r, keys.STREAM_TRAINING) if e.type == "train.step"]
    assert len(steps) == 2
    assert steps[1].grad_norm == pytest.approx(steps[0].grad_norm, rel=1e-5)
    for name, weight in alone.model.state_dict().items():
        # Both ranks hold the same weights, and they are the one-process weights.
        torch.testing.assert_close(lead["weights"][name], other["weights"][name], rtol=0, atol=0)
        torch.testing.assert_close(lead["weights"][name], weight, rtol=1e-4, atol=1e-5)
    # Rank 0 alone wrote the checkpoint, in the one-process format, with the file's cursor.
    latest = CheckpointStore(tmp_path / "ranks" / "ckpt").load_latest()
    assert latest is not None and latest.info.step == 1
    assert latest.manifest.codebook is not None
    assert latest.info.cursor is not None and latest.info.cursor.examples_done == examples


def test_a_job_resumes_from_two_ranks_on_one_process_and_back_with_nothing_skipped(
    r: redis.Redis,
    redis_url: str,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    data = write_jsonl(codec_rows[:39], "resume.jsonl")  # the 40th is too long
    settings = {
        "micro_batch_tokens": 256,
        "tokens_per_step": 512,  # two rows a step: one micro-batch on each rank
        "save_steps": 2,
        "eval_steps": 1000,
        "layer_monitor_steps": 0,
    }
    job = {"path": str(data), "job": "cut", "settings": settings}
    lead, _ = run_ranks(redis_url, embedded_dir, tmp_path, {**job, "stop": 3})
    assert lead["result"] is None and lead["step"] == 4  # stop asked at 3, agreed at step 4

    alone = build(r, embedded_dir, tmp_path, settings)
    assert alone.global_step == 4
    assert train(alone, data, "cut", stop=6) is None and alone.global_step == 6

    lead, other = run_ranks(redis_url, embedded_dir, tmp_path, {**job, "stop": None})
    assert lead["result"] is not None and lead["result"]["examples"] == 39
    assert other["step"] == lead["step"] == lead["result"]["global_step"]

    steps = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))  # no step twice
    seen = Counter(tuple(e) for s in steps for e in s["examples"])
    expected = {(raw.line, raw.offset, 0) for raw in read_lines(data) if not raw.blank}
    assert set(seen) == expected and set(seen.values()) == {1}  # each example exactly once


@pytest.mark.parametrize("oom_rank", [1, 0])
def test_an_out_of_memory_on_one_rank_halves_the_micro_batch_on_all(
    oom_rank: int,
    r: redis.Redis,
    redis_url: str,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    data = write_jsonl(codec_rows[:16], "oom.jsonl")
    settings = {
        "micro_batch_tokens": 512,  # two rows a micro-batch until the out-of-memory
        "tokens_per_step": 100_000,
        "eval_steps": 1000,
        "layer_monitor_steps": 0,
    }
    alone = build(r, embedded_dir, tmp_path / "alone", settings)
    expected = alone.train_file(data, job_id="oom", name=data.name)
    job = {"path": str(data), "job": "oom", "stop": None, "settings": settings}
    lead, other = run_ranks(
        redis_url, embedded_dir, tmp_path / "ranks", {**job, "oom_rank": oom_rank}
    )
    assert lead["rows_per_batch"] == other["rows_per_batch"] == 1  # both backed off
    assert lead["result"]["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)
    # Ranks agree exactly. Against one process the gradients differ only in summation order
    # (the all-reduce), but AdamW's first step is about lr * sign(gradient): a gradient within
    # rounding of zero may take the other sign, and that weight then differs by up to two
    # steps. So: every weight within two steps, and all but a handful within 5% of one.
    step_size = alone.settings.learning_rate
    for name, weight in alone.model.state_dict().items():
        torch.testing.assert_close(lead["weights"][name], other["weights"][name], rtol=0, atol=0)
        gap = (lead["weights"][name].float() - weight.float()).abs()
        assert gap.max().item() <= 2.05 * step_size, name
        off = (gap > 1e-4 * weight.float().abs() + 0.05 * step_size).sum().item()
        assert off <= max(2, weight.numel() // 1000), (name, off)
    alerts = [e for e in events(r, keys.STREAM_ALERTS) if e.code == "oom_recovered"]
    assert len(alerts) == 1 and "halved from 2 to 1 rows" in alerts[0].message
