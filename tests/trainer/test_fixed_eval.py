"""The trainer scores the fixed validation set every R3_EVAL_STEPS and at each checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from bus import keys
from bus.broadcast import EARLIEST, BroadcastReader
from bus.events import CheckpointReady, EvalResult
from bus.status import StatusStore
from checkpoints.settings import CheckpointSettings
from services.feeder.demo import problem_lines, write_shard
from services.trainer.checkpoint import CheckpointStore
from services.trainer.config import TrainerSettings
from services.trainer.loop import Trainer
from services.trainer.loop_config import LoopSettings
from services.validation.evolution import read_evolution
from services.validation.sets import load_set, set_path, stored_ids


def _events(r: redis.Redis, stream: str) -> list[object]:
    return [d.event for d in BroadcastReader(r, {stream: EARLIEST}).read(0)]


@pytest.mark.usefixtures("one_thread")
def test_fixed_eval_fills_status_events_checkpoints_and_evolution(
    r: redis.Redis, embedded_dir: Path, tmp_path: Path
) -> None:
    trainer = Trainer(
        r,
        settings=TrainerSettings.model_validate(
            {
                "max_length": 256,
                "micro_batch_tokens": 1024,
                "tokens_per_step": 1024,
                "learning_rate": 3e-3,
                "warmup_steps": 0,
                "activation_checkpointing": False,
                "eval_steps": 2,
                "eval_examples": 6,
                "save_steps": 3,
                "layer_monitor_steps": 0,
            }
        ),
        loop_settings=LoopSettings(
            sample_max_new_tokens=8,
            fixed_eval_sets="syllogism:1:canonical",
            eval_max_tokens=16,
            probe_count=3,
            rejects_dir=tmp_path / "rejects",
        ),
        checkpoint_settings=CheckpointSettings(
            data_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt", min_free_disk_bytes=0
        ),
        model_path=embedded_dir,
        device="cpu",
    )
    stored = set_path(tmp_path / "validation", "syllogism", 1, "canonical")
    assert len(load_set(stored)) == 6
    data = tmp_path / "train.jsonl"
    write_shard(
        data,
        problem_lines(
            "syllogism", 1, count=40, seed=0, exclude=stored_ids(tmp_path / "validation")
        ),
    )
    summary = trainer.train_file(data)
    steps = summary["global_step"]
    assert steps >= 3

    results = [e for e in _events(r, keys.STREAM_EVAL) if isinstance(e, EvalResult)]
    assert results, "no eval.result published"
    assert {e.eval_set for e in results} == {"syllogism-d1-canonical"}
    assert all(e.total == 6 and 0.0 <= e.fixed_eval_em <= 1.0 for e in results)
    assert all(e.fixed_eval_ce is not None and e.fixed_eval_ce > 0 for e in results)
    # The measures that compare modes: the golden answers' CE, the model's reasoning length.
    assert all(e.answer_ce is not None and e.answer_ce > 0 for e in results)
    assert all(e.thinking_tokens is not None and e.thinking_tokens >= 0 for e in results)
    assert results[-1].step == steps  # the end-of-file checkpoint was scored too

    status = StatusStore(r).read()
    assert status.fixed_eval_em is not None and status.fixed_eval_ce is not None
    assert status.validation_loss is not None
    # ECE calibrates the answers' own confidence: an output with no answer after a 🛑 (the
    # untrained tiny model's usual) has none, so ECE may be None, never a made-up number.
    assert status.fixed_eval_ece is None or 0.0 <= status.fixed_eval_ece <= 1.0
    assert status.val_train_gap is not None
    assert status.pattern_heatmap is not None
    assert status.pattern_heatmap["domains"] == ["syllogism"]
    if len(results) > 1:
        assert status.fixed_eval_trend in ("improving", "stable", "degrading")

    ready = [e for e in _events(r, keys.STREAM_CHECKPOINTS) if isinstance(e, CheckpointReady)]
    assert ready and all(e.val_loss is not None and e.fixed_eval_em is not None for e in ready)
    store = CheckpointStore(tmp_path / "ckpt")
    for info in store.list():
        assert info.val_loss is not None  # validation.json beside it: retention's "best"
        saved = json.loads((store.root / info.id / "validation.json").read_text())
        assert saved["val_loss"] == pytest.approx(info.val_loss)

    # The in-loop sample asks the fixed set's questions, not every domain's.
    assert status.current_prompt in {i.question for i in load_set(stored)}

    history = read_evolution(r, eval_set="syllogism-d1-canonical")
    assert len(history["probes"]) == 3
    checkpointed = read_evolution(r, checkpoints_only=True)["evaluations"]
    assert {e["checkpoint_id"] for e in checkpointed} == {e.checkpoint_id for e in ready}
    for probe in history["probes"]:
        assert len(probe["history"]) == len(history["evaluations"])


@pytest.mark.usefixtures("one_thread")
def test_an_english_set_gets_the_budget_of_its_references_whatever_the_ceiling(
    r: redis.Redis, embedded_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 16: R3_EVAL_MAX_TOKENS=96 (the demo's) under English syllogism references of
    # ~130 tokens scored every English checkpoint EM 0.00. The budget covers the references.
    from services.model.loading import load_model_and_tokenizer
    from services.trainer.fixed_eval import FixedEvaluator
    from services.trainer.tokenize import ChatTokenizer
    from services.validation.scorer import BUDGET_MARGIN_TOKENS

    model, tokenizer = load_model_and_tokenizer(embedded_dir, device="cpu")
    evaluator = FixedEvaluator(
        r,
        tokenizer,
        ChatTokenizer(tokenizer),
        sets="syllogism:1:english",
        root=tmp_path / "validation",
        size=3,
        max_new_tokens=96,
        probe_count=0,
    )
    items = evaluator.sets[0].items
    longest = max(
        len(tokenizer(item.messages[-1]["content"], add_special_tokens=False)["input_ids"])
        for item in items
    )
    assert longest > 96  # the references are longer than the ceiling
    with caplog.at_level("WARNING"):
        outcome = evaluator.evaluate(model, step=0, train_loss=None)
    assert outcome is not None
    [result] = [e for e in _events(r, keys.STREAM_EVAL) if isinstance(e, EvalResult)]
    assert result.eval_set == "syllogism-d1-english"
    assert result.max_tokens is not None and result.max_tokens >= longest + BUDGET_MARGIN_TOKENS
    assert "raised from the ceiling of 96" in caplog.text
    # The comparable measures ride along; the untrained model decodes with the default codebook.
    assert result.answer_ce is not None and result.answer_ce > 0
    assert result.thinking_tokens is not None and result.thinking_tokens > 0
    assert result.codebook is None
