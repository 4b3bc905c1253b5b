"""A trainer under test: small fast settings on the embedded model, users'-format lines, and
the events it published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from bus.broadcast import EARLIEST, BroadcastReader
from checkpoints.settings import CheckpointSettings
from services.trainer.config import TrainerSettings
from services.trainer.loop import Trainer
from services.trainer.loop_config import LoopSettings

SMALL = {
    "max_length": 256,
    "micro_batch_tokens": 512,
    "tokens_per_step": 512,
    "pack_buffer_examples": 16,
    "learning_rate": 3e-3,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "activation_checkpointing": False,
    "eval_steps": 10,
    "eval_examples": 4,
    "layer_monitor_steps": 5,
    "save_steps": 1000,
}


def make_trainer(
    r: redis.Redis,
    model_dir: Path,
    tmp: Path,
    *,
    ledger: Path | None = None,
    weights: str = "auto",
    **overrides: Any,
) -> Trainer:
    """A Trainer on the embedded model with small, fast settings and its own checkpoint dir."""
    return Trainer(
        r,
        settings=TrainerSettings.model_validate({**SMALL, **overrides}),
        loop_settings=LoopSettings(
            sample_max_new_tokens=12,
            rejects_dir=tmp / "rejects",
            train_ledger=ledger,
            weights=weights,  # type: ignore[arg-type]
        ),
        checkpoint_settings=CheckpointSettings(
            data_dir=tmp, checkpoint_dir=tmp / "ckpt", min_free_disk_bytes=0
        ),
        model_path=model_dir,
        device="cpu",
    )


def events(r: redis.Redis, stream: str) -> list[Any]:
    """Every event `stream` still holds, oldest first."""
    return [d.event for d in BroadcastReader(r, {stream: EARLIEST}).read(0)]


def settings(**overrides: Any) -> TrainerSettings:
    """Settings from defaults and `overrides` only, whatever R3_* the environment holds."""
    return TrainerSettings.model_validate(overrides)


def think(reasoning: str, answer: str, stops: int = 3) -> str:
    """Assistant content in the users' format."""
    return f"🤔🤔🤔🤔\n{reasoning}\n{'🛑' * stops}\n{answer}"


def chat_line(question: str, reasoning: str, answer: str, **meta: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": think(reasoning, answer)},
        ]
    }
    if meta:
        line["meta"] = meta
    return line
