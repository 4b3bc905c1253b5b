"""Settings for where checkpoints go and which ones retention keeps (env `R3_*`).

How often to save is the training job's `R3_SAVE_STEPS` (services.trainer.config).
"""

from __future__ import annotations

from datetime import time
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator

from settings.base import R3Settings

GIB = 1 << 30


class CheckpointSettings(R3Settings):
    checkpoint_dir: Path | None = Field(
        None,
        description="Where checkpoints are written, one directory each (`step-00001000/`).",
        json_schema_extra={"shown_default": "$R3_DATA_DIR/checkpoints"},
    )
    keep_last_checkpoints: int = Field(
        3,
        ge=1,
        description="Retention keeps this many most recent checkpoints.",
    )
    snapshot_time: time = Field(
        time(3, 0),
        description="Daily snapshot: the first checkpoint written at or after this local time "
        "(HH:MM, the trainer host's TZ) each day is kept as that day's snapshot.",
    )
    snapshot_days: int = Field(
        7,
        ge=0,
        description="How many daily snapshots retention keeps (today's included); 0 keeps none.",
    )
    keep_best_checkpoint: bool = Field(
        True,
        description="Retention never deletes the checkpoint with the lowest validation loss.",
    )
    min_free_disk_bytes: int = Field(
        20 * GIB,
        ge=0,
        description="Below this much free disk in the checkpoint directory, the oldest "
        "checkpoints not the newest or the best are deleted (with a checkpoint.pruned event).",
        json_schema_extra={"shown_default": "21474836480 (20 GiB)"},
    )

    @field_validator("snapshot_time", mode="before")
    @classmethod
    def _hh_mm(cls, value: object) -> object:
        # "3:00" and "03:00" both mean three in the morning; say the format when it is neither.
        if isinstance(value, str):
            hours, sep, minutes = value.strip().partition(":")
            if not (sep and hours.isdigit() and minutes.isdigit()):
                raise ValueError(
                    f"R3_SNAPSHOT_TIME={value!r}: give a local time as HH:MM, e.g. 03:00"
                )
            return time(int(hours), int(minutes))
        return value

    @property
    def checkpoints_path(self) -> Path:
        """`checkpoint_dir` if set, else `<data_dir>/checkpoints`."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.layout.checkpoints


@lru_cache
def get_checkpoint_settings() -> CheckpointSettings:
    """Read once per process; tests that change the environment call `cache_clear()`."""
    return CheckpointSettings()
