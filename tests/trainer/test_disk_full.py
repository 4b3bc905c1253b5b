"""A full disk pauses training with an alert and resumes when space returns: never a failed
job, never a lost step. The checkpoint directory is a small tmpfs filled by the test."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import keys
from services.trainer.dataset_reader import read_lines
from tests.rig.trainer import events, make_trainer

SIZE_MB = 96


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ckpt"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / ".filler"
    free = _free(disk)
    with filler.open("wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        for _ in range(max(0, (free - leave_bytes) >> 20)):
            f.write(chunk)
    return filler


def _free(disk: Path) -> int:
    import shutil

    return shutil.disk_usage(disk).free


def test_a_full_disk_pauses_training_with_an_alert_and_it_resumes_when_space_returns(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    small_disk: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    trainer = make_trainer(
        r,
        embedded_dir,
        tmp_path,
        ledger=ledger,
        eval_steps=1000,
        layer_monitor_steps=0,
        save_steps=2,
    )
    trainer.disk.poll_seconds = 0.2
    data = write_jsonl(codec_rows[:16], "full.jsonl")
    filler = fill(small_disk, leave_bytes=4 << 20)  # no room for even one checkpoint
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = trainer.train_file(data, job_id="job-full", name="full.jsonl")
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=train)
    worker.start()
    deadline = time.monotonic() + 120
    while not [a for a in events(r, keys.STREAM_ALERTS) if a.code == "disk_full"]:
        assert worker.is_alive(), outcome
        assert time.monotonic() < deadline, "no disk_full alert"
        time.sleep(0.1)
    paused_at = trainer.global_step
    time.sleep(1)
    assert trainer.global_step == paused_at and worker.is_alive()  # paused, not failed
    filler.unlink()  # space returns
    worker.join(120)
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert outcome["result"]["examples"] == 16

    codes = [a.code for a in events(r, keys.STREAM_ALERTS)]
    # Retention tried first under disk pressure (disk_low: nothing it may delete), then the
    # pause was announced once, and its end.
    assert [c for c in codes if c in ("disk_full", "disk_ok")] == ["disk_full", "disk_ok"]
    assert codes.index("disk_low") < codes.index("disk_full")
    full = next(a for a in events(r, keys.STREAM_ALERTS) if a.code == "disk_full")
    assert "paused, not failed" in full.message
    steps = [json.loads(line) for line in ledger.read_text().splitlines()]
    seen = Counter(tuple(e) for s in steps for e in s["examples"])
    expected = {(raw.line, raw.offset, 0) for raw in read_lines(data) if not raw.blank}
    assert set(seen) == expected and set(seen.values()) == {1}
    saved = [e.step for e in events(r, keys.STREAM_CHECKPOINTS) if e.type == "checkpoint.ready"]
    assert saved and saved[0] == paused_at and saved[-1] == trainer.global_step
    # A next file trains as usual: a full disk once does not fail every later job.
    again = trainer.train_file(write_jsonl(codec_rows[16:24], "next.jsonl"), job_id="job-next")
    assert again["examples"] == 8


def test_a_full_disk_first_frees_what_retention_allows_and_training_goes_on(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    small_disk: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    trainer = make_trainer(
        r,
        embedded_dir,
        tmp_path,
        eval_steps=1000,
        layer_monitor_steps=0,
        save_steps=1,
    )
    trainer.disk.poll_seconds = 0.2
    # Plain lines only: the disk is sized to these checkpoints, and codes would grow them.
    codec_rows = [row for row in codec_rows if row["meta"]["mode"] != "encoded"]
    trainer.train_file(write_jsonl(codec_rows[:12], "first.jsonl"), job_id="job-1")
    kept = [info.id for info in trainer.store.list()]
    assert len(kept) >= 3  # the last three and today's snapshot: ~76 MB of the 96 MB disk
    fill(small_disk, leave_bytes=4 << 20)
    result = trainer.train_file(write_jsonl(codec_rows[12:20], "second.jsonl"), job_id="job-2")
    assert result["examples"] == 8
    pruned = [e for e in events(r, keys.STREAM_CHECKPOINTS) if e.type == "checkpoint.pruned"]
    for_disk = {e.checkpoint_id for e in pruned if e.reason == "disk"}
    assert for_disk and for_disk <= set(kept[:-1])  # never the newest
    assert "disk_full" not in [a.code for a in events(r, keys.STREAM_ALERTS)]  # no pause needed


def fill_up(disk: Path) -> Path:
    """Write until the disk refuses a single page."""
    filler = disk / ".filler-all"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue
    return filler


def test_a_full_disk_while_validation_writes_its_rejects_pauses_and_goes_on(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    small_disk: Path,
    codec_rows: list[dict[str, Any]],
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    trainer = make_trainer(
        r, embedded_dir, tmp_path, eval_steps=1000, layer_monitor_steps=0, reject_threshold=0.5
    )
    trainer.loop = trainer.loop.model_copy(update={"rejects_dir": small_disk / "rejects"})
    trainer.disk.poll_seconds = 0.2
    data = write_jsonl([*codec_rows[:8], "not json"], "rejects.jsonl")
    filler = fill_up(small_disk)
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = trainer.train_file(data, job_id="job-rejects")
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=train)
    worker.start()
    deadline = time.monotonic() + 120
    while not [a for a in events(r, keys.STREAM_ALERTS) if a.code == "disk_full"]:
        assert worker.is_alive(), outcome
        assert time.monotonic() < deadline, "no disk_full alert"
        time.sleep(0.1)
    filler.unlink()
    worker.join(120)
    assert "error" not in outcome, outcome
    assert outcome["result"]["rejected"] == 1 and outcome["result"]["examples"] == 8
    kept = list((small_disk / "rejects").glob("*.rejects.jsonl"))
    assert len(kept) == 1 and "not json" in kept[0].read_text()


def test_before_any_checkpoint_the_room_needed_is_the_state_in_memory(tmp_path: Path) -> None:
    # Without it, a torch.save that fails with a bare "file write failed" after the small
    # weights fit would count as a fault of its own and fail the job.
    from services.trainer.checkpoint import CheckpointStore
    from services.trainer.disk import MIN_NEEDED, DiskFull

    store = CheckpointStore(tmp_path / "ckpt")
    stop = threading.Event()
    guessing = DiskFull(store, lambda: None, None, stop)  # type: ignore[arg-type]
    assert guessing.needed_bytes() == MIN_NEEDED
    sized = DiskFull(
        store,
        lambda: None,  # type: ignore[arg-type,return-value]
        None,  # type: ignore[arg-type]
        stop,
        first_checkpoint_bytes=lambda: 3 << 30,
    )
    assert sized.needed_bytes() == int((3 << 30) * 1.1)
