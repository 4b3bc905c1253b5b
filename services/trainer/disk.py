"""A full disk pauses training, never fails it: free what retention allows, alert, wait for
space, then write again and go on from exactly where training was.

Only bad data fails a job (DESIGN, "faults pause, never fail"). A write that meets ENOSPC or
EDQUOT (a checkpoint, the rejects file) is retried here: first after retention has deleted
what it may under disk pressure (quarantined checkpoints, then unprotected ones; never the
newest or the best), else after an `alert` (disk_full) and a wait until the free space is back.
The model and optimizer stay in memory meanwhile, so nothing is lost; a stop asked for while
waiting ends the job as a stop (it resumes from the last checkpoint's cursor).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bus.events import Alert
from bus.publish import Publisher
from services.trainer.checkpoint import CheckpointStore
from services.trainer.retention import RetentionPolicy, apply_retention

log = logging.getLogger(__name__)

T = TypeVar("T")
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
MIN_NEEDED = 64 << 20  # before any checkpoint exists to size the next one by


# How writers that are not Python's own file objects say ENOSPC/EDQUOT: safetensors (Rust)
# raises SafetensorError("... No space left on device (os error 28)"); torch.save's
# RuntimeError only says "file write failed", which the free-space check below catches.
_FULL_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    text = str(exc).lower()
    return any(words in text for words in _FULL_WORDS)


class DiskFull:
    """Runs writes that may meet a full disk; one per Trainer."""

    def __init__(
        self,
        store: CheckpointStore,
        policy: Callable[[], RetentionPolicy],
        publisher: Publisher,
        stop: threading.Event,
        *,
        poll_seconds: float = 5.0,
        first_checkpoint_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        # Before any checkpoint exists, the size of the first: weights and optimizer state in
        # memory. Without it a torch.save that fails with a bare "file write failed" once the
        # small weights fit would look like a fault of its own and fail the job.
        self.first_checkpoint_bytes = first_checkpoint_bytes
        self.policy = policy
        self.publisher = publisher
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.paused_total = 0  # how many times training waited for space (the chaos bench)

    def needed_bytes(self) -> int:
        """Room for one more checkpoint: the newest one's size and a tenth more."""
        listed = self.store.list()
        if listed:
            return int(listed[-1].size_bytes * 1.1)
        if self.first_checkpoint_bytes is not None:
            return max(MIN_NEEDED, int(self.first_checkpoint_bytes() * 1.1))
        return MIN_NEEDED

    def free_bytes(self, where: Path) -> int:
        probe = where
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def run(
        self,
        write: Callable[[], T],
        *,
        what: str,
        where: Path,
        interrupted: Callable[[], BaseException],
        strict: bool = False,
    ) -> T:
        """`write()`, again and again until the disk has room for it; raises `interrupted()`
        when a stop is asked for while waiting. `strict`: only an error that says the disk
        is full counts (for work that can fail for reasons of its own, like validation);
        otherwise any failure with less free space than a checkpoint needs counts too."""
        alerted = False
        pruned = False
        while True:
            try:
                result = write()
            except Exception as exc:
                needed = self.needed_bytes()
                short = not strict and self.free_bytes(where) < needed
                if not (is_disk_full(exc) or short):
                    raise
                if not pruned:
                    pruned = True
                    if self._prune(needed):
                        continue  # retention freed something: try at once
                if not alerted:
                    alerted = True
                    self.paused_total += 1
                    self._alert(
                        "error",
                        "disk_full",
                        f"{what}: the disk is full ({_first_line(exc)}; {self.free_bytes(where)} "
                        f"bytes free under {where}, about {needed} needed). Training is "
                        "paused, not failed: retention freed what it may; free some space "
                        "and it goes on by itself from where it stopped.",
                    )
                self._wait_for(needed, where, interrupted)
                pruned = False  # a later full disk may find new checkpoints to prune
                continue
            if alerted:
                self._alert("info", "disk_ok", f"{what}: written; training goes on")
            return result

    def _prune(self, needed: int) -> bool:
        base = self.policy()
        pressure = dataclasses.replace(
            base, min_free_disk_bytes=max(base.min_free_disk_bytes, needed)
        )
        try:
            result = apply_retention(self.store, pressure, publisher=self.publisher)
        except OSError as exc:
            log.warning("pruning for disk space failed: %s", exc)
            return False
        return bool(result.pruned or result.quarantine_freed_bytes)

    def _wait_for(self, needed: int, where: Path, interrupted: Callable[[], BaseException]) -> None:
        while True:
            if self.stop.wait(self.poll_seconds):
                raise interrupted()
            if self.free_bytes(where) >= needed:
                return

    def _alert(self, level: str, code: str, message: str) -> None:
        log.log(logging.ERROR if level == "error" else logging.INFO, "%s", message)
        try:
            self.publisher.publish(Alert(level=level, source="trainer", code=code, message=message))
        except Exception:  # the pause itself must not fail for want of an event
            log.exception("could not publish the %s alert", code)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
