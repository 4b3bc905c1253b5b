"""Settings of the demo data and the self-improvement feeder (env `R3_*`, torch-free)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator

from services.validation.config import ValidationSettings

CurriculumMode = Literal["english", "canonical", "encoded", "transitional"]


class FeederSettings(ValidationSettings):
    """What `regime3 up` seeds the queue with, and when the feeder asks the node for more."""

    demo_domain: str = Field(
        "syllogism",
        description="The built-in domain `regime3 up` trains on out of the box (and the "
        "feeder generates).",
    )
    demo_difficulty: int = Field(1, ge=1, description="Difficulty level of the demo domain.")
    demo_mode: CurriculumMode = Field(
        "canonical",
        description="How the demo's reasoning is written. `transitional` follows the "
        "curriculum English → canonical → encoded over R3_CURRICULUM_EXAMPLES examples.",
    )
    demo_seed_examples: int = Field(
        20_000,
        ge=0,
        description="Examples `regime3 up` queues at start when the training queues are empty "
        "(in R3_DEMO_SHARD_EXAMPLES-sized files); 0 seeds nothing.",
    )
    demo_shard_examples: int = Field(
        2_000, ge=1, description="Examples per seeded file (one training job each)."
    )
    feeder_low_mark: int = Field(
        4_000,
        ge=0,
        description="When the examples waiting in the training queues (plus those of generate "
        "jobs not finished yet) fall below this, the feeder queues a node generate job.",
    )
    feeder_max_queue: int = Field(
        20_000,
        ge=1,
        description="Never queue generation that would take the waiting examples past this: "
        "a full queue pauses generation.",
    )
    feeder_job_examples: int = Field(2_000, ge=1, description="Problems per node generate job.")
    feeder_interval_seconds: float = Field(
        10.0, gt=0, description="Seconds between the feeder's looks at the queues."
    )
    feeder_await_seed: str | None = Field(
        None,
        description="Set by `regime3 up` while it seeds the demo data: the feeder queues no "
        "generation until the feeder hash's `seeded` field holds this value, so it never "
        "mistakes a queue about to be seeded for an empty one.",
    )
    curriculum_examples: int | None = Field(
        None,
        ge=1,
        description="Length of the transitional curriculum in examples: English first, "
        "canonical in between, encoded last (codec.modes.TransitionalSchedule). Unset: the "
        "seeded examples (R3_DEMO_SEED_EXAMPLES), so the data the run sees ends encoded and "
        "the feeder's generated data goes on from there; with no seed, R3_FEEDER_MAX_QUEUE.",
        json_schema_extra={"shown_default": "R3_DEMO_SEED_EXAMPLES"},
    )

    @property
    def curriculum_total(self) -> int:
        """The curriculum's length: sized to the data the run will see (a curriculum of
        200,000 examples over 20,000 seeded ones never left English)."""
        return self.curriculum_examples or self.demo_seed_examples or self.feeder_max_queue

    @model_validator(mode="after")
    def _marks(self) -> FeederSettings:
        if self.feeder_low_mark >= self.feeder_max_queue:
            raise ValueError(
                f"R3_FEEDER_LOW_MARK={self.feeder_low_mark} must be below "
                f"R3_FEEDER_MAX_QUEUE={self.feeder_max_queue}, or generation never pauses"
            )
        if self.feeder_low_mark + self.feeder_job_examples > self.feeder_max_queue:
            raise ValueError(
                f"R3_FEEDER_LOW_MARK={self.feeder_low_mark} + R3_FEEDER_JOB_EXAMPLES="
                f"{self.feeder_job_examples} must not pass R3_FEEDER_MAX_QUEUE="
                f"{self.feeder_max_queue}: below the low mark one more job must fit, or "
                "generation pauses for good while the queue is low"
            )
        return self


@lru_cache
def get_feeder_settings() -> FeederSettings:
    """The settings read once per process; tests that change env call `cache_clear()`."""
    return FeederSettings()
