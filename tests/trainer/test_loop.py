"""The training loop on the real tiny model, CPU, real Redis: metrics, status, checkpoints."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from transformers import PreTrainedTokenizerBase

from bus import keys
from bus.status import StatusStore
from services.trainer.checkpoint import CheckpointStore
from services.trainer.config import TrainerSettings
from services.trainer.errors import RejectThresholdError
from services.trainer.loop import lr_factor
from services.trainer.optim import BF16AdamW
from services.trainer.sampling import Sampler, validation_problems
from tests.rig.trainer import events, make_trainer


@pytest.fixture
def repetitive(codec_rows: list[dict[str, Any]], write_jsonl: Callable[..., Path]) -> Path:
    """A few dozen steps of data that repeats the same 12 problems (unique ids, so no line is
    a duplicate): loss must fall quickly on it."""
    rows = []
    for i in range(120):
        row = json.loads(json.dumps(codec_rows[i % 12]))
        row["meta"]["id"] = f"rep-{i}"
        rows.append(row)
    return write_jsonl(rows, "repetitive.jsonl")


def test_a_short_run_learns_and_reports_every_step(
    r: redis.Redis, embedded_dir: Path, tmp_path: Path, repetitive: Path, one_thread: None
) -> None:
    trainer = make_trainer(r, embedded_dir, tmp_path)
    result = trainer.train_file(repetitive, job_id="job-1", name="repetitive.jsonl")
    steps = result["steps"]
    assert steps >= 20 and result["global_step"] == steps
    assert result["examples"] == 120

    training = events(r, keys.STREAM_TRAINING)
    step_events = [e for e in training if e.type == "train.step"]
    assert [e.current_step for e in step_events] == list(range(1, steps + 1))
    losses = [e.loss for e in step_events]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # falling, clearly
    last = step_events[-1]
    assert last.batch_step == steps and last.batch_total_steps == steps
    assert last.current_file == "repetitive.jsonl" and last.batch_number == 1
    assert last.tokens_per_sec and last.tokens_per_sec > 0 and last.eta_seconds == 0
    assert last.streaming_ce is not None and last.loss_variance is not None
    assert last.token_entropy is not None and last.grad_norm is not None
    assert last.batch_queue_size == 0 and last.gpu_temp_c is None  # CPU: no GPU readings

    samples = [e for e in training if e.type == "train.sample"]
    assert [e.current_step for e in samples] == list(range(10, steps + 1, 10))
    assert samples[-1].total_evals == len(samples) and samples[0].golden_answer
    layers = [e for e in training if e.type == "train.layers"]
    assert [e.current_step for e in layers] == list(range(5, steps + 1, 5))
    summary = layers[0].layer_activity_summary
    assert {"layer_00", "layer_03", "embed"} <= summary.keys()
    assert summary["layer_00"]["grad_norm"] > 0 and summary["layer_00"]["update_norm"] > 0

    status = StatusStore(r).read()
    assert status.status == "completed" and status.current_step == steps
    assert status.context_window == 256 and status.model_name
    assert status.loss == pytest.approx(losses[-1])
    assert len(status.train_loss_history) == steps  # the trend rule: test_metrics.py
    assert status.total_evals == len(samples) and status.accuracy_percent is not None
    assert status.golden_answer and status.current_prompt and status.timestamp
    assert status.layer_activity_summary and status.tokens_per_sec

    # The file's end is checkpointed with a cursor past its last line.
    ready = events(r, keys.STREAM_CHECKPOINTS)
    assert [e.step for e in ready if e.type == "checkpoint.ready"] == [steps]
    latest = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert latest is not None and latest.info.cursor is not None
    assert latest.info.cursor.byte_offset == repetitive.stat().st_size
    assert latest.info.cursor.job_id == "job-1" and latest.info.cursor.examples_done == 120


def test_a_file_over_the_reject_threshold_fails_before_any_step(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    bad = write_jsonl([*codec_rows[:20], "not json", {"messages": []}], "bad.jsonl")
    trainer = make_trainer(r, embedded_dir, tmp_path)
    with pytest.raises(RejectThresholdError, match="line 21: not valid JSON"):
        trainer.train_file(bad)
    assert trainer.global_step == 0
    # No step was trained: only the status changes (training, then idle again) were published.
    training = events(r, keys.STREAM_TRAINING)
    assert [e.type for e in training if e.type != "train.status"] == []
    assert [e.status for e in training][-1] == "idle"
    assert (tmp_path / "rejects").is_dir()


def test_a_new_trainer_continues_from_the_newest_checkpoint(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    small = write_jsonl(codec_rows[:12], "small.jsonl")
    first = make_trainer(r, embedded_dir, tmp_path, eval_steps=1000, layer_monitor_steps=0)
    done = first.train_file(small, job_id="a")["global_step"]
    again = make_trainer(r, embedded_dir, tmp_path)
    assert again.global_step == done and again.files_taken == 1
    assert again.latest_cursor is not None and again.latest_cursor.job_id == "a"
    state = again.optimizer.state_dict()["state"]
    assert state and int(next(iter(state.values()))["step"]) == done  # AdamW moments restored
    # The manifest records the whole recipe, the schedule's horizon and weights' dtype included.
    latest = again.store.load_latest()
    assert latest is not None
    recipe = latest.manifest.trainer_config
    assert recipe["learning_rate"] == again.settings.learning_rate
    assert recipe["lr_decay_steps"] == again.loop.lr_decay_steps
    assert recipe["weights"] in ("bf16", "fp32") and "data_dir" not in recipe


def test_the_schedule_warms_up_then_decays_to_its_floor() -> None:
    settings = TrainerSettings.model_validate(
        {"warmup_steps": 10, "lr_schedule": "cosine", "min_lr_ratio": 0.1}
    )
    factor = lr_factor(settings, decay_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1) and factor(10_000) == pytest.approx(0.1)
    constant = lr_factor(settings.model_copy(update={"lr_schedule": "constant"}), 110)
    assert constant(500) == 1.0


def test_sample_prompts_are_held_out_problems_of_every_domain_in_a_fixed_cycle(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    sampler = Sampler(tokenizer, count=16, max_new_tokens=4)
    drawn = [sampler.next_problem() for _ in range(20)]
    assert drawn[16:] == drawn[:4]  # cycles after `count`, same order
    assert {p.split for p in drawn} == {"heldout"}  # never a training problem
    assert len({p.domain for p in drawn}) >= 3
    assert drawn[:16] == validation_problems(16)


def test_a_step_with_non_finite_gradients_leaves_the_weights_alone(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    # No encoded line: codes would grow the embedding, a change these steps did not make.
    plain = [row for row in codec_rows if row["meta"]["mode"] != "encoded"]
    data = write_jsonl(plain[:3], "nan.jsonl")
    trainer = make_trainer(r, embedded_dir, tmp_path, eval_steps=1000, layer_monitor_steps=0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def poison(module: torch.nn.Module, args: Any, output: Any) -> Any:
        output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    trainer.model.get_decoder().register_forward_hook(poison)
    trainer.train_file(data)
    alerts = [a for a in events(r, keys.STREAM_ALERTS) if a.code == "nonfinite_gradients"]
    assert len(alerts) == trainer.global_step >= 1
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_weights_train_with_bf16_adamw_and_resume(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    data = write_jsonl(codec_rows[:16], "bf16.jsonl")
    quiet = {"eval_steps": 1000, "layer_monitor_steps": 0}
    trainer = make_trainer(r, embedded_dir, tmp_path, weights="bf16", **quiet)
    assert isinstance(trainer.optimizer, BF16AdamW)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    before = next(trainer.model.parameters()).detach().clone()
    result = trainer.train_file(data)
    assert math.isfinite(result["final_loss"])
    assert not torch.equal(before, next(trainer.model.parameters()))

    again = make_trainer(r, embedded_dir, tmp_path, weights="bf16", **quiet)
    assert again.global_step == result["global_step"]
    state = again.optimizer.state_dict()["state"]
    assert next(iter(state.values()))["exp_avg"].dtype == torch.bfloat16
    # On the CPU, auto means fp32 weights and torch's AdamW.
    plain = make_trainer(r, embedded_dir, tmp_path / "fp32", **quiet)
    assert isinstance(plain.optimizer, torch.optim.AdamW) and plain.weights_dtype == torch.float32
