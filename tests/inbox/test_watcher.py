from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from bus import keys
from bus.broadcast import EARLIEST, BroadcastReader
from services.inbox.config import InboxSettings
from services.inbox.watcher import QUEUED_KEY, Inbox, Outcome
from tests.rig.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
STABLE = 5.0


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path) -> InboxSettings:
    return InboxSettings(
        data_dir=tmp_path / "data",
        inbox_dir=tmp_path / "inbox",
        inbox_stable_seconds=STABLE,
        inbox_poll_seconds=0.1,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inbox(r: redis.Redis, settings: InboxSettings, clock: Clock) -> Inbox:
    box = Inbox(r, settings, clock=clock)
    box.ensure_folders()
    return box


def dataset(tag: str, lines: int = 2) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{tag}: what is {i}+{i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(lines)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def drop(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def take_stable(inbox: Inbox, clock: Clock) -> list[Outcome]:
    """Two passes: the first sees the files, the second (STABLE s later) takes them."""
    assert inbox.scan_once() == []
    clock.now += STABLE
    return inbox.scan_once()


def queued(r: redis.Redis, priority: str) -> list[dict[str, Any]]:
    return [job.kwargs for job in Queue(f"train-{priority}", connection=r).jobs]


def test_priority_comes_from_the_folder_or_the_name(
    r: redis.Redis, inbox: Inbox, clock: Clock
) -> None:
    root = inbox.root
    drop(root / "a.jsonl", dataset("a"))
    drop(root / "high" / "b.jsonl", dataset("b"))
    drop(root / "low" / "c.jsonl", dataset("c"))
    drop(root / "normal" / "d.jsonl", dataset("d"))
    drop(root / "e.high.jsonl", dataset("e"))
    drop(root / "low" / "f.high.jsonl", dataset("f"))  # the name wins over the folder
    drop(root / "g.low.jsonl", dataset("g"))
    outcomes = take_stable(inbox, clock)
    assert sorted((o.source.name, o.action, o.priority) for o in outcomes) == [
        ("a.jsonl", "queued", "normal"),
        ("b.jsonl", "queued", "high"),
        ("c.jsonl", "queued", "low"),
        ("d.jsonl", "queued", "normal"),
        ("e.high.jsonl", "queued", "high"),
        ("f.high.jsonl", "queued", "high"),
        ("g.low.jsonl", "queued", "low"),
    ]
    assert sorted(k["name"] for k in queued(r, "high")) == [
        "b.jsonl",
        "e.high.jsonl",
        "f.high.jsonl",
    ]
    assert sorted(k["name"] for k in queued(r, "normal")) == ["a.jsonl", "d.jsonl"]
    assert sorted(k["name"] for k in queued(r, "low")) == ["c.jsonl", "g.low.jsonl"]
    # The inbox is empty again; every job points at its bytes in the store, by content.
    assert [p for p in root.rglob("*") if p.is_file()] == []
    for job in queued(r, "high") + queued(r, "normal") + queued(r, "low"):
        stored = Path(job["path"])
        assert stored.parent == inbox.settings.datasets_path.resolve()
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == job["sha256"]
        assert stored.name == f"{job['sha256']}.jsonl"
    announced = [d.event for d in BroadcastReader(r, {keys.STREAM_JOBS: EARLIEST}).read(0)]
    assert sorted(e.priority for e in announced) == ["high"] * 3 + ["low"] * 2 + ["normal"] * 2


def test_a_growing_file_is_not_taken_until_it_stops_changing(
    r: redis.Redis, inbox: Inbox, clock: Clock
) -> None:
    whole = dataset("big", lines=50)
    path = drop(inbox.root / "big.jsonl", whole[: len(whole) // 2])
    assert inbox.scan_once() == [] and inbox.waiting == [path]
    clock.now += STABLE - 1
    with path.open("ab") as f:  # the copy goes on
        f.write(whole[len(whole) // 2 :])
    assert inbox.scan_once() == []
    clock.now += STABLE - 1  # stable for less than STABLE since the last change
    assert inbox.scan_once() == []
    clock.now += 1
    [outcome] = inbox.scan_once()
    assert outcome.action == "queued"
    assert outcome.sha256 == hashlib.sha256(whole).hexdigest()  # the whole file, not half
    assert inbox.waiting == []


def test_part_files_wait_until_renamed(r: redis.Redis, inbox: Inbox, clock: Clock) -> None:
    part = drop(inbox.root / "high" / "upload.jsonl.part", dataset("u"))
    hidden = drop(inbox.root / ".upload.jsonl", dataset("h"))
    for _ in range(3):
        assert inbox.scan_once() == []
        clock.now += 10 * STABLE
    assert part.exists() and hidden.exists() and inbox.waiting == []
    part.rename(part.with_name("upload.jsonl"))
    [outcome] = take_stable(inbox, clock)
    assert (outcome.source.name, outcome.priority) == ("upload.jsonl", "high")


def test_the_same_bytes_dropped_twice_are_queued_once_unless_asked(
    r: redis.Redis, inbox: Inbox, clock: Clock, settings: InboxSettings
) -> None:
    data = dataset("same")
    drop(inbox.root / "first.jsonl", data)
    [first] = take_stable(inbox, clock)
    assert first.action == "queued"
    assert r.hget(QUEUED_KEY, first.sha256) == first.job_id.encode()

    drop(inbox.root / "high" / "second.jsonl", data)
    [dup] = take_stable(inbox, clock)
    assert (dup.action, dup.job_id) == ("duplicate", first.job_id)
    kept = inbox.root / "duplicates" / "second.jsonl"
    assert dup.moved_to == kept and kept.read_bytes() == data  # kept, never deleted
    assert len(queued(r, "normal")) == 1 and queued(r, "high") == []
    [alert] = [d.event for d in BroadcastReader(r, {keys.STREAM_ALERTS: EARLIEST}).read(0)]
    assert alert.code == "inbox_duplicate" and first.job_id in alert.message

    # Asked for by name…
    drop(inbox.root / "third.again.jsonl", data)
    [again] = take_stable(inbox, clock)
    assert again.action == "queued" and again.job_id != first.job_id
    # …or by the setting.
    requeueing = Inbox(
        r, settings.model_copy(update={"inbox_requeue_duplicates": True}), clock=clock
    )
    drop(inbox.root / "fourth.jsonl", data)
    [forced] = take_stable(requeueing, clock)
    assert forced.action == "queued"
    assert len(queued(r, "normal")) == 3


def test_a_bad_file_is_rejected_with_the_reason_beside_it(
    r: redis.Redis, inbox: Inbox, clock: Clock
) -> None:
    bad = dataset("ok", lines=1) + b'{"messages": [\n'
    drop(inbox.root / "bad.jsonl", bad)
    drop(inbox.root / "notes.txt", b"remember the milk\n")
    outcomes = {o.source.name: o for o in take_stable(inbox, clock)}
    rejected = inbox.root / "rejected"
    assert outcomes["bad.jsonl"].action == "rejected"
    assert (rejected / "bad.jsonl").read_bytes() == bad
    why = (rejected / "bad.jsonl.error.txt").read_text()
    assert "bad.jsonl:2: not JSON" in why and "drop it into the inbox again" in why
    assert "not a .jsonl file" in (rejected / "notes.txt.error.txt").read_text()
    assert all(not queued(r, p) for p in ("high", "normal", "low"))
    # The same name rejected again does not overwrite the first one or its reason.
    drop(inbox.root / "bad.jsonl", b"[1, 2]\n")
    [again] = take_stable(inbox, clock)
    assert again.moved_to is not None and again.moved_to != rejected / "bad.jsonl"
    assert "a JSON list, not an object" in Path(f"{again.moved_to}.error.txt").read_text()
    assert (rejected / "bad.jsonl").read_bytes() == bad
    alerts = [d.event for d in BroadcastReader(r, {keys.STREAM_ALERTS: EARLIEST}).read(0)]
    assert [a.code for a in alerts] == ["inbox_rejected"] * 3


def test_without_redis_files_wait_in_the_inbox(
    r: redis.Redis, settings: InboxSettings, clock: Clock
) -> None:
    # No retries: the default backoff would only make the test slower, not different.
    nobody = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    offline = Inbox(nobody, settings, clock=clock)
    path = drop(settings.inbox_path / "a.jsonl", dataset("a"))
    assert take_stable(offline, clock) == []
    assert path.exists() and not settings.datasets_path.exists()
    # Redis back: the same file goes through.
    [outcome] = take_stable(Inbox(r, settings, clock=clock), clock)
    assert outcome.action == "queued" and not path.exists()


def test_the_service_queues_a_dropped_file_and_stops_on_sigterm(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    inbox_dir = tmp_path / "inbox"
    env = dict(
        os.environ,
        R3_REDIS_URL=redis_url,
        R3_DATA_DIR=str(tmp_path / "data"),
        R3_INBOX_DIR=str(inbox_dir),
        R3_INBOX_POLL_SECONDS="0.1",
        R3_INBOX_STABLE_SECONDS="0.3",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.inbox"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        part = drop(inbox_dir / "high" / "drop.jsonl.part", dataset("svc"))
        part.rename(part.with_name("drop.jsonl"))
        high = Queue("train-high", connection=r)
        deadline = time.monotonic() + 30
        while high.count == 0:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no job queued within 30 s"
            time.sleep(0.1)
        assert high.jobs[0].kwargs["name"] == "drop.jsonl"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert took < 1.5, f"took {took:.2f}s to stop"
    assert "queued drop.jsonl" in output and "inbox stopped" in output


DEEP = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
HUGE_INT = b'{"messages": [], "n": ' + b"9" * 5000 + b"}\n"


@pytest.mark.parametrize(("line", "why"), [(DEEP, "nested too deeply"), (HUGE_INT, "4300")])
def test_a_line_json_loads_refuses_rejects_the_file_never_deletes_it(
    r: redis.Redis, inbox: Inbox, clock: Clock, line: bytes, why: str
) -> None:
    # RecursionError / ValueError from json.loads used to escape the check, and the store's
    # `finally` then removed the moved file: the user's only copy was gone.
    data = dataset("ok", lines=2) + line
    drop(inbox.root / "hostile.jsonl", data)
    [outcome] = take_stable(inbox, clock)
    assert outcome.action == "rejected"
    rejected = inbox.root / "rejected" / "hostile.jsonl"
    assert rejected.read_bytes() == data
    text = (inbox.root / "rejected" / "hostile.jsonl.error.txt").read_text()
    assert "hostile.jsonl:3: not JSON" in text and why in text
    assert inbox.settings.datasets_path.name not in text  # the user's name, not the store's
    assert all(not queued(r, p) for p in ("high", "normal", "low"))
    assert [p.name for p in inbox.settings.datasets_path.iterdir()] == []


def test_a_store_failure_puts_the_users_file_back(
    r: redis.Redis, inbox: Inbox, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.dataset_store as store_module

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    data = dataset("kept", lines=3)
    path = drop(inbox.root / "kept.jsonl", data)
    monkeypatch.setattr(store_module, "check_jsonl", boom)
    assert inbox.scan_once() == []
    clock.now += STABLE
    with pytest.raises(OSError):
        inbox.scan_once()
    assert path.read_bytes() == data  # still where the user put it, for the next pass
    monkeypatch.undo()
    [outcome] = inbox.scan_once()
    assert outcome.action == "queued"


def test_a_utf8_bom_is_accepted(r: redis.Redis, inbox: Inbox, clock: Clock) -> None:
    drop(inbox.root / "windows.jsonl", b"\xef\xbb\xbf" + dataset("bom", lines=2))
    [outcome] = take_stable(inbox, clock)
    assert outcome.action == "queued", outcome.reason


def test_a_symlink_is_reported_not_skipped_forever(
    r: redis.Redis, inbox: Inbox, clock: Clock, tmp_path: Path
) -> None:
    target = drop(tmp_path / "elsewhere" / "real.jsonl", dataset("link", lines=2))
    (inbox.root / "link.jsonl").symlink_to(target)
    [outcome] = take_stable(inbox, clock)
    assert outcome.action == "rejected" and "symbolic link" in (outcome.reason or "")
    assert target.read_bytes() == dataset("link", lines=2)  # the target is untouched
    moved = inbox.root / "rejected" / "link.jsonl"
    assert moved.is_symlink()
    assert "Copy or move the file itself" in Path(f"{moved}.error.txt").read_text()
    alerts = [d.event for d in BroadcastReader(r, {keys.STREAM_ALERTS: EARLIEST}).read(0)]
    assert [a.code for a in alerts] == ["inbox_rejected"]
    assert all(not queued(r, p) for p in ("high", "normal", "low"))
