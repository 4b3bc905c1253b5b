"""The training loop's own settings: torch-free, so `regime3 settings` needs no model stack."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.validation.config import ValidationSettings


class LoopSettings(ValidationSettings):
    """The training loop's own settings (the job's are in services.trainer.config); the fixed
    sets' folder and answer budget are ValidationSettings'."""

    lr_decay_steps: int = Field(
        10_000,
        ge=1,
        description="Optimizer steps over which the cosine or linear schedule decays to "
        "R3_MIN_LR_RATIO after warmup; training is continuous across files, so the horizon is "
        "a number of steps, not a file's length. Past it the rate stays at the minimum.",
    )
    sample_max_new_tokens: int = Field(
        256, ge=1, description="Most tokens the in-loop sample may generate (greedy)."
    )
    rejects_dir: Path | None = Field(
        None,
        description="Where each file's rejected lines are written (JSONL with line, reason and "
        "text).",
        json_schema_extra={"shown_default": "$R3_DATA_DIR/rejects"},
    )
    weights: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Dtype of the trained weights. `fp32`: fp32 weights, torch AdamW, bf16 "
        "autocast on a GPU. `bf16`: bf16 weights and moments with BF16AdamW (stochastic "
        "rounding): half the memory, what the 8 GiB target needs for Qwen3-0.6B. `auto`: bf16 "
        "on a GPU that supports it, else fp32.",
    )
    data_workers: int = Field(
        0,
        ge=0,
        description="Processes that parse and tokenize a file's lines (validation and "
        "training); 0 does it in the trainer process. A few help on a large file.",
    )
    train_ledger: Path | None = Field(
        None,
        description="For tests and audits: append (fsync'd) the example ids of every optimizer "
        "step to this JSONL file.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="CPU threads torch uses in the trainer; 0 leaves torch's default (one per "
        "core). On a small shared CPU 1 is faster: spinning threads wait on each other.",
    )
    fixed_eval_sets: str = Field(
        "",
        description="The fixed validation sets scored every R3_EVAL_STEPS steps and at every "
        "checkpoint, as comma-separated domain:difficulty:mode (e.g. "
        "`syllogism:1:canonical,arithmetic:2:english`); each is drawn once from the held-out "
        "split with a fixed seed and stored under R3_VALIDATION_DIR. Empty: none (`regime3 "
        "up` sets the demo's set when no model is configured).",
    )
    fixed_eval_at_checkpoint: bool = Field(
        True,
        description="Also score the fixed sets on every checkpoint written, so its "
        "checkpoint.ready carries val_loss and fixed_eval_em and retention keeps the best.",
    )
    probe_count: int = Field(
        8,
        ge=0,
        description="The first this many problems of each fixed set are the probes whose "
        "answers are kept for every evaluation (the evolution tracker, `r3:evolution`).",
    )
