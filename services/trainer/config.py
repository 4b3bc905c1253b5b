"""Settings of a training job: data checks, batching, optimizer, loss, monitoring (env `R3_*`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from settings.base import R3Settings

ThinkingMarkers = Literal["require", "allow", "ignore"]
Overlong = Literal["reject", "split"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
LrSchedule = Literal["cosine", "linear", "constant"]
Compile = Literal["auto", "on", "off"]
Attention = Literal["auto", "varlen", "flex_attention", "sdpa"]
Liger = Literal["auto", "loss", "all", "off"]


class TrainerSettings(R3Settings):
    """What one training job does with a file; checkpoint retention lives in CheckpointSettings."""

    # -- data checks -----------------------------------------------------------------------
    max_length: int = Field(
        4096,
        ge=16,
        description="Longest example in tokens (chat template included), and the length of a "
        "packed row. A longer example is rejected or split (R3_OVERLONG), never truncated.",
    )
    overlong: Overlong = Field(
        "reject",
        description="An example over R3_MAX_LENGTH: `reject` it, or `split` a multi-turn "
        "conversation at turn boundaries into pieces that fit (a single exchange that does not "
        "fit is still rejected).",
    )
    thinking_markers: ThinkingMarkers = Field(
        "require",
        description="Check of the reasoning markers in assistant turns: `require` them in the "
        "final assistant turn, `allow` them (checked only where present), or `ignore` them.",
    )
    think_open_count: int = Field(4, ge=1, description="How many 🤔 in a row open the reasoning.")
    stop_min_count: int = Field(
        2, ge=1, description="Fewest 🛑 in a row that close the reasoning before the answer."
    )
    stop_max_count: int = Field(
        4, ge=1, description="Most 🛑 in a row that close the reasoning before the answer."
    )
    reject_threshold: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fraction of a file's lines that may be rejected; above it the job fails "
        "before any optimizer step, naming the first bad lines.",
    )
    max_line_bytes: int = Field(
        16 << 20,
        ge=1024,
        description="A line longer than this many bytes is rejected without being parsed, so "
        "one runaway line cannot exhaust memory.",
        json_schema_extra={"shown_default": "16777216 (16 MiB)"},
    )
    # -- batching --------------------------------------------------------------------------
    tokens_per_step: int = Field(
        32768,
        ge=16,
        description="Batches are a token budget per optimizer step, not a number of examples: "
        "packed rows are added to a step while their tokens fit this budget.",
    )
    micro_batch_tokens: int = Field(
        8192,
        ge=16,
        description="Row slots (rows x R3_MAX_LENGTH) in one forward/backward pass; an "
        "out-of-memory lowers it for the step and raises accumulation, keeping the step's tokens.",
    )
    pack_buffer_examples: int = Field(
        2000,
        ge=1,
        description="Examples read ahead and packed best-fit-decreasing together; memory grows "
        "with this, never with the file.",
    )
    seed: int = Field(
        0, description="Seed for row order within a pack buffer and for model-side randomness."
    )
    epochs: int = Field(1, ge=1, description="Passes over each training file.")
    # -- optimizer -------------------------------------------------------------------------
    learning_rate: float = Field(
        2e-5, gt=0.0, description="Peak AdamW learning rate (after warmup)."
    )
    lr_schedule: LrSchedule = Field(
        "cosine", description="Learning-rate decay after warmup: cosine, linear or constant."
    )
    min_lr_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="The schedule decays to this fraction of R3_LEARNING_RATE at the last step.",
    )
    warmup_steps: int = Field(
        100, ge=0, description="Optimizer steps of linear warmup from zero learning rate."
    )
    weight_decay: float = Field(
        0.01, ge=0.0, description="AdamW decoupled weight decay (not applied to norms, biases)."
    )
    adam_beta1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, gt=0.0, lt=1.0, description="AdamW beta2.")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    grad_clip: float = Field(
        1.0, ge=0.0, description="Clip the global gradient norm to this; 0 turns clipping off."
    )
    # -- memory and precision --------------------------------------------------------------
    precision: Precision = Field(
        "auto",
        description="Training dtype: `auto` is bf16 on a GPU that supports it, else fp32.",
    )
    activation_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute each layer's activations in backward instead of keeping them: "
        "less memory per micro-batch for about a third more compute. `auto`: off until a step "
        "does not fit the free memory (or R3_GPU_MEMORY_GIB), then on for the rest of the run "
        "(before the out-of-memory back-off halves the micro-batch); `true` or `false` force it.",
    )
    gpu_memory_gib: float | None = Field(
        None,
        gt=0.0,
        description="Most GPU memory the trainer may use, in GiB (e.g. 22 on a 24 GB 4090 that "
        "also drives a display); past it a step counts as out of memory and the trainer turns "
        "activation checkpointing on, then lowers the micro-batch. Unset: the whole GPU.",
    )
    compile: Compile = Field(
        "auto",
        description="torch.compile the decoder on the packed rows' fixed shapes (every row is "
        "R3_MAX_LENGTH long). `auto`: on with CUDA, off on CPU; the compile time is logged, "
        "published as an info alert and kept in the status hash (`compile_seconds`).",
    )
    attention: Attention = Field(
        "auto",
        description="Attention over packed documents, none of which sees another: `varlen` "
        "(torch.nn.attention.varlen, CUDA, no mask at all), `flex_attention` (a document block "
        "mask), `sdpa` (a dense mask transformers builds from the position ids). `auto`: varlen "
        "on CUDA, sdpa on CPU.",
    )
    liger: Liger = Field(
        "auto",
        description="Liger-Kernel on CUDA (the `cuda` extra): `loss` is its fused linear "
        "cross-entropy alone, `all` adds its RMSNorm, RoPE and SwiGLU kernels, `off` keeps the "
        "chunked loss. `auto`: `loss` when the decoder is compiled (inductor fuses those "
        "elementwise chains itself; which of the two is faster is not yet measured, see "
        "bench/README.md), `all` when it is not; off on CPU.",
    )
    loss_chunk_tokens: int = Field(
        1024,
        ge=1,
        description="Loss tokens whose logits are computed at once; the largest loss tensor "
        "is about this x vocabulary x 4 bytes (1024 x 151,936 x 4 = 622 MB), never all logits.",
    )
    # -- code tokens -----------------------------------------------------------------------
    codebook: Path | None = Field(
        None,
        description="Codebook JSON (`regime3 codec build`) whose <E###> codes a run adds as "
        "tokens when its first file with codes arrives; unset: the built-in codebook. A run "
        "keeps the codebook it started with (saved in its checkpoints); files encoded with "
        "another codebook fail.",
    )
    # -- monitoring ------------------------------------------------------------------------
    log_steps: int = Field(
        1, ge=1, description="Publish loss, learning rate and throughput every this many steps."
    )
    eval_steps: int = Field(
        50,
        ge=1,
        description="Every this many optimizer steps, evaluate the fixed validation set and one "
        "sample answer against its golden answer.",
    )
    eval_examples: int = Field(
        64, ge=1, description="Size of the fixed validation set drawn from held-out examples."
    )
    save_steps: int = Field(
        1000,
        ge=1,
        description="Write a checkpoint every this many optimizer steps (and at each file's end).",
    )
    layer_monitor_steps: int = Field(
        100,
        ge=0,
        description="Every this many steps, record per-layer weight and gradient norms; 0 "
        "turns the layer monitor off.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainerSettings:
        # Cross-field rules, each naming the options involved and what to change.
        if self.stop_min_count > self.stop_max_count:
            raise ValueError(
                f"R3_STOP_MIN_COUNT={self.stop_min_count} is above "
                f"R3_STOP_MAX_COUNT={self.stop_max_count}; the 🛑 range must not be empty"
            )
        if self.micro_batch_tokens < self.max_length:
            raise ValueError(
                f"R3_MICRO_BATCH_TOKENS={self.micro_batch_tokens} is below "
                f"R3_MAX_LENGTH={self.max_length}; a micro-batch must hold at least one row"
            )
        if self.tokens_per_step < self.micro_batch_tokens:
            raise ValueError(
                f"R3_TOKENS_PER_STEP={self.tokens_per_step} is below "
                f"R3_MICRO_BATCH_TOKENS={self.micro_batch_tokens}; a step must hold at least "
                "one micro-batch"
            )
        return self

    @property
    def rows_per_micro_batch(self) -> int:
        """Packed rows in one micro-batch before any out-of-memory back-off."""
        return self.micro_batch_tokens // self.max_length


@lru_cache
def get_trainer_settings() -> TrainerSettings:
    """The settings read once per process; tests that change env call `cache_clear()`."""
    return TrainerSettings()
