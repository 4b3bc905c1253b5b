"""Settings of the inbox service (env `R3_*`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from settings.base import R3Settings


class InboxSettings(R3Settings):
    inbox_dir: Path | None = Field(
        None,
        description="The drop folder: a .jsonl file put here (normal priority), in high/ or "
        "low/, or named `name.high.jsonl` / `name.low.jsonl`, becomes a training job. Write "
        "big files as `name.jsonl.part` and rename when done.",
        json_schema_extra={"shown_default": "$R3_DATA_DIR/inbox"},
    )
    inbox_poll_seconds: float = Field(
        2.0,
        gt=0,
        description="How often the inbox folder is looked at.",
    )
    inbox_stable_seconds: float = Field(
        5.0,
        ge=0,
        description="A dropped file is taken only once its size and modification time have "
        "not changed for this long (so a file still being copied is never taken half-written).",
    )
    inbox_requeue_duplicates: bool = Field(
        False,
        description="Queue a file again even if the same bytes were queued before. Without it, "
        "a duplicate goes to inbox/duplicates/ unless its name has `.again` "
        "(`name.again.jsonl`).",
    )

    @property
    def inbox_path(self) -> Path:
        """`inbox_dir` if set, else `<data_dir>/inbox`."""
        return self.inbox_dir if self.inbox_dir is not None else self.layout.inbox

    @property
    def datasets_path(self) -> Path:
        """The dataset store, the same one `regime3 enqueue` uses."""
        return self.layout.datasets


@lru_cache
def get_inbox_settings() -> InboxSettings:
    """Read once per process; tests that change the environment call `cache_clear()`."""
    return InboxSettings()
