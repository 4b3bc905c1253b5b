"""Settings of the fixed validation sets, shared by whoever writes or scores them (env `R3_*`).

The trainer (LoopSettings), the node (NodeSettings) and the feeder (FeederSettings) inherit
these, so one variable means the same thing in every process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from settings.base import R3Settings


class ValidationSettings(R3Settings):
    validation_dir: Path | None = Field(
        None,
        description="Where the fixed validation sets are stored (JSONL with meta.golden); the "
        "trainer, the node and the feeder read and write the same sets here.",
        json_schema_extra={"shown_default": "$R3_DATA_DIR/validation"},
    )
    eval_max_tokens: int = Field(
        384,
        ge=1,
        description="Ceiling of a fixed-eval answer's budget (greedy), in the trainer and in "
        "a node's eval job alike; the budget follows the set: its longest golden turn plus a "
        "margin (services.validation.scorer). The ceiling never cuts below the longest golden "
        "turn plus 16 tokens (a warning says when it would have): a shorter budget would score "
        "every answer of a verbose mode as unfinished. An eval job's own max_tokens sets it "
        "exactly.",
    )

    @property
    def validation_path(self) -> Path:
        """`validation_dir` if set, else `<data_dir>/validation`."""
        return self.validation_dir if self.validation_dir is not None else self.layout.validation
