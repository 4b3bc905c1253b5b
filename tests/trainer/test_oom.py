"""Out-of-memory back-off: injected on CPU, the step is retried with half the micro-batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from bus import keys
from services.trainer.oom import Backoff, StepOutOfMemory, run_with_backoff
from tests.rig.trainer import events, make_trainer


def oom_above(limit: int, times: int = 1) -> Callable[[int], int]:
    """An attempt that runs out of memory (the first `times` times) above `limit` rows."""
    left = [times]

    def attempt(rows: int) -> int:
        if rows > limit and left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return rows * 10

    return attempt


def test_backoff_halves_until_the_step_fits_and_resets_each_time() -> None:
    resets: list[int] = []
    backoffs: list[Backoff] = []
    result, rows = run_with_backoff(
        oom_above(2, times=5), 8, step=7, reset=lambda: resets.append(1), on_backoff=backoffs.append
    )
    assert (result, rows) == (20, 2)
    assert [(b.rows_before, b.rows_after) for b in backoffs] == [(8, 4), (4, 2)]
    assert len(resets) == 2 and all(b.step == 7 for b in backoffs)


def test_a_single_row_out_of_memory_fails_the_step_with_what_to_do() -> None:
    with pytest.raises(
        StepOutOfMemory,
        match=r"step 3: out of memory with a single packed row.*"
        r"R3_MAX_LENGTH",
    ):
        run_with_backoff(
            oom_above(0, times=9), 2, step=3, reset=lambda: None, on_backoff=lambda b: None
        )


def test_an_injected_oom_in_training_is_recovered_with_the_same_global_batch(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    data = write_jsonl(codec_rows[:16], "oom.jsonl")
    common = {
        "micro_batch_tokens": 1024,
        "tokens_per_step": 1024,
        "eval_steps": 1000,
        "layer_monitor_steps": 0,
    }

    reference = make_trainer(r, embedded_dir, tmp_path / "ref", **common)
    reference.train_file(data)
    expected = [e for e in events(r, keys.STREAM_TRAINING) if e.type == "train.step"]
    r.delete(keys.STREAM_TRAINING)

    trainer = make_trainer(r, embedded_dir, tmp_path / "oom", **common)
    fired: list[int] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rows = kwargs["input_ids"].shape[0]
        if rows > 2 and not fired:  # the first micro-batch of more than 2 rows
            fired.append(rows)
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    trainer.model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    result = trainer.train_file(data)

    assert fired == [4] and trainer.rows_per_batch == 2
    # (the encoded lines' codes were added as tokens first: an info alert of its own)
    alerts = [a for a in events(r, keys.STREAM_ALERTS) if a.code != "code_tokens"]
    assert [(a.code, a.level) for a in alerts] == [("oom_recovered", "warning")]
    assert "halved from 4 to 2 rows" in alerts[0].message
    steps = [e for e in events(r, keys.STREAM_TRAINING) if e.type == "train.step"]
    assert result["steps"] == len(expected) == len(steps)  # training went on to the end
    # Same rows and tokens per step, twice the accumulation, the same loss.
    assert [s.tokens for s in steps] == [s.tokens for s in expected]
    assert steps[0].micro_batch == 2 and steps[0].grad_accum == 2 * expected[0].grad_accum
    for got, want in zip(steps, expected, strict=True):
        assert got.loss == pytest.approx(want.loss, rel=1e-4)


def test_a_lighter_step_is_tried_before_halving_the_micro_batch() -> None:
    # R3_ACTIVATION_CHECKPOINTING=auto: the first out-of-memory turns checkpointing on and
    # retries at the same size; only a second one halves.
    lightened: list[int] = []

    def lighten() -> bool:
        lightened.append(1)
        return len(lightened) == 1  # the first call changes something, later ones cannot

    backoffs: list[Backoff] = []
    result, rows = run_with_backoff(
        oom_above(2, times=2), 4, step=1, reset=lambda: None, on_backoff=backoffs.append,
        lighten=lighten,
    )  # fmt: skip
    assert (result, rows) == (20, 2)
    assert [(b.rows_before, b.rows_after, b.checkpointing) for b in backoffs] == [
        (4, 4, True),
        (4, 2, False),
    ]
