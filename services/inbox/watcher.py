"""Scanning the inbox: wait until a dropped file is stable, store it by content, queue it once.

Polling, not inotify: size and modification time that stay unchanged for
`inbox_stable_seconds` are the only sign of a finished copy that works the same on a local
disk, NFS, SMB and a Docker bind mount (where inotify events may never arrive).

Nothing a user drops is ever deleted: a file is moved into the dataset store (queued), to
`duplicates/` (those bytes were queued before) or to `rejected/` with `<name>.error.txt`
beside it saying why.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import redis

from bus import keys, queues
from bus.events import Alert
from bus.keys import heartbeat_key
from bus.publish import Publisher
from bus.settings import get_bus_settings
from checkpoints.durable import sha256_file
from services.dataset_store import DatasetError, DatasetStore, StoredDataset
from services.inbox.config import InboxSettings
from services.inbox.markers import PRIORITY_FOLDERS, DropName, in_progress, is_dataset, parse

log = logging.getLogger(__name__)

# Hash: dataset sha256 → id of the job the inbox queued for it. No TTL: one field per
# distinct file a person dropped, so it stays small; deleting a field lets those bytes be
# queued again. (To move into bus/keys.py with the other keys.)
QUEUED_KEY = keys.INBOX_QUEUED

DUPLICATES = "duplicates"
REJECTED = "rejected"

Action = Literal["queued", "duplicate", "rejected"]


@dataclass(frozen=True)
class Outcome:
    source: Path  # where the file was dropped
    action: Action
    priority: str
    sha256: str | None = None
    job_id: str | None = None  # the new job, or for a duplicate the one queued before
    moved_to: Path | None = None  # the stored dataset, or the file in duplicates/ / rejected/
    reason: str | None = None  # why it was rejected


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # clock time this size and mtime were first seen


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or a stamped variant of it, never a file that is already there."""
    target = folder / name
    if not target.exists():
        return target
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = Path(name)
    return folder / f"{path.stem}-{stamp}-{secrets.token_hex(2)}{path.suffix}"


class Inbox:
    """One inbox folder. `scan_once()` is the whole behaviour; `run()` repeats it."""

    def __init__(
        self,
        connection: redis.Redis,
        settings: InboxSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        publisher: Publisher | None = None,
    ) -> None:
        self.redis = connection
        self.settings = settings
        self.root = settings.inbox_path
        self.store = DatasetStore(settings.datasets_path)
        self.clock = clock
        self.publisher = publisher or Publisher(connection)
        self._seen: dict[Path, _Seen] = {}
        self._redis_down = False

    def ensure_folders(self) -> None:
        for sub in ("high", "low"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- finding stable files -----------------------------------------------------------------

    def candidates(self) -> list[tuple[Path, str]]:
        """Files in the inbox and its priority folders, each with its folder's priority."""
        found: list[tuple[Path, str]] = []
        for folder, priority in [(self.root, "normal")] + [
            (self.root / name, name) for name in PRIORITY_FOLDERS
        ]:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            found.extend(
                (Path(entry.path), priority)
                for entry in entries
                if (entry.is_file(follow_symlinks=False) or entry.is_symlink())
                and not in_progress(entry.name)
            )
        return sorted(found)

    def _stable(self, path: Path, now: float) -> bool:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            self._seen[path] = seen = _Seen(stat.st_size, stat.st_mtime_ns, now)
        return now - seen.since >= self.settings.inbox_stable_seconds

    @property
    def waiting(self) -> list[Path]:
        """Files seen but not yet stable (still being written, as far as we can tell)."""
        return sorted(self._seen)

    # -- one pass -----------------------------------------------------------------------------

    def scan_once(self) -> list[Outcome]:
        """Take every file that has been stable long enough; returns what became of each."""
        now = self.clock()
        found = self.candidates()
        present = {path for path, _ in found}
        for gone in set(self._seen) - present:  # renamed or removed by its owner
            del self._seen[gone]
        outcomes = []
        for path, folder_priority in found:
            if not self._stable(path, now):
                continue
            try:
                outcome = self.take(path, parse(path, folder_priority))
            except FileNotFoundError:  # its owner moved it away between stat and take
                self._seen.pop(path, None)
                continue
            except redis.RedisError as exc:
                if not self._redis_down:
                    log.warning("Redis unreachable (%s); files stay in the inbox until it is", exc)
                self._redis_down = True
                break
            self._redis_down = False
            self._seen.pop(path, None)
            outcomes.append(outcome)
        return outcomes

    def take(self, path: Path, drop: DropName) -> Outcome:
        """Queue one stable file, or move it to duplicates/ or rejected/ saying why."""
        if path.is_symlink():
            # Not followed: a link could hand the trainer (and the store) any file this
            # service can read. The link itself goes to rejected/; its target is untouched.
            return self._reject(
                path,
                drop,
                f"{path.name}: a symbolic link (to {os.readlink(path)}); the inbox does not "
                "follow links. Copy or move the file itself into the inbox",
            )
        if not is_dataset(path):
            return self._reject(
                path,
                drop,
                f"{path.name}: not a .jsonl file; the inbox takes JSONL datasets (one "
                '{"messages": [...]} object a line) named *.jsonl',
            )
        if not (drop.again or self.settings.inbox_requeue_duplicates):
            # A hash is enough here: the same bytes as a queued file passed its checks then.
            # The one full check (every line parsed) is the store's, below.
            digest = sha256_file(path)
            earlier = self.redis.hget(QUEUED_KEY, digest)
            if earlier is not None:
                return self._duplicate(
                    path,
                    drop,
                    digest,
                    earlier.decode() if isinstance(earlier, bytes) else earlier,
                )
        try:
            # Checked again on the copy in the store: what is queued is what was checked.
            stored = self.store.add(path, move=True)
        except DatasetError as exc:  # a bad file; the store put it back where it was
            return self._reject(path, drop, str(exc))
        try:
            job = queues.enqueue(
                self.redis,
                queues.TRAIN_FILE,
                kind="train",
                priority=drop.priority,
                kwargs={
                    "path": str(stored.path.resolve()),
                    "name": stored.name,
                    "sha256": stored.sha256,
                },
                description=f"train {stored.name} ({stored.lines} examples, from the inbox)",
                publisher=self.publisher,
            )
            self.redis.hset(QUEUED_KEY, stored.sha256, job.id)
        except redis.RedisError:
            self._put_back(stored, path)
            raise
        log.info(
            "queued %s: %d examples, train-%s, job %s, dataset %s",
            path.name,
            stored.lines,
            drop.priority,
            job.id,
            stored.sha256[:12],
        )
        return Outcome(path, "queued", drop.priority, stored.sha256, job.id, moved_to=stored.path)

    # -- where files go when not queued -------------------------------------------------------

    def _put_back(self, stored: StoredDataset, path: Path) -> None:
        """Undo the move into the store, so the next scan tries again (Redis was down)."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        shutil.copyfile(stored.path, tmp)
        os.replace(tmp, path)

    def _duplicate(self, path: Path, drop: DropName, sha256: str, earlier: str) -> Outcome:
        folder = self.root / DUPLICATES
        folder.mkdir(exist_ok=True)
        target = _free_name(folder, path.name)
        shutil.move(path, target)
        message = (
            f"{path.name}: the same bytes were queued before (job {earlier}); moved to "
            f"{target}. To train on it again, drop it as `name.again.jsonl`."
        )
        log.info("%s", message)
        self._alert("info", "inbox_duplicate", message)
        return Outcome(path, "duplicate", drop.priority, sha256, earlier, moved_to=target)

    def _reject(self, path: Path, drop: DropName, reason: str) -> Outcome:
        folder = self.root / REJECTED
        folder.mkdir(exist_ok=True)
        target = _free_name(folder, path.name)
        shutil.move(path, target)
        target.with_name(target.name + ".error.txt").write_text(
            f"{reason}\n\nNothing was queued. Fix the file and drop it into the inbox again.\n"
        )
        log.warning("rejected %s: %s", path.name, reason)
        self._alert("warning", "inbox_rejected", f"{path.name} rejected: {reason}")
        return Outcome(path, "rejected", drop.priority, moved_to=target, reason=reason)

    def _alert(self, level: Literal["info", "warning"], code: str, message: str) -> None:
        try:
            self.publisher.publish(Alert(level=level, source="inbox", code=code, message=message))
        except redis.RedisError as exc:  # the file is already where it belongs; say so in the log
            log.warning("could not publish the %s alert: %s", code, exc)

    def _heartbeat(self) -> None:
        """Say this inbox finished a pass; the key outlives three passes (`regime3 health`)."""
        ttl = max(5, math.ceil(3 * self.settings.inbox_poll_seconds))
        key = heartbeat_key("inbox", get_bus_settings().host_name)
        self.redis.set(key, datetime.now(UTC).isoformat(timespec="seconds"), ex=ttl)

    # -- forever ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Scan every `inbox_poll_seconds` until `stop` is set (a signal handler sets it)."""
        self.ensure_folders()
        log.info(
            "watching %s (and high/, low/) every %gs; files stable for %gs are queued",
            self.root,
            self.settings.inbox_poll_seconds,
            self.settings.inbox_stable_seconds,
        )
        while not stop.is_set():
            try:
                self.scan_once()
                self._heartbeat()
            except Exception:
                # One bad pass (a permission error, a full disk) must not end the service.
                log.exception("inbox scan failed; trying again in the next pass")
            stop.wait(self.settings.inbox_poll_seconds)
        log.info("inbox stopped")
