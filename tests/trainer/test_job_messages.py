"""A failed training job names the user's file, never the store's `<sha256>.jsonl` path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from services.trainer.errors import RejectThresholdError
from tests.rig.trainer import make_trainer


def test_a_failed_job_names_the_users_file_not_the_stored_copy(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    deep = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    data = write_jsonl([*codec_rows[:5], deep, "not json"], "tmp.jsonl")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    stored = data.rename(tmp_path / f"{digest}.jsonl")  # as the dataset store keeps it
    trainer = make_trainer(r, embedded_dir, tmp_path)
    with pytest.raises(RejectThresholdError) as caught:
        trainer.train_file(stored, job_id="job-x", sha256=digest, name="my-data.jsonl")
    message = str(caught.value)
    assert message.startswith("my-data.jsonl: 2 of 7 lines rejected")
    assert "line 6: not valid JSON: nested too deeply" in message
    assert digest not in message.split("All rejected lines")[0]
