"""Which checkpoints to keep (last N, daily snapshots, the best) and deleting the rest.

`plan_retention` is pure: given the listing, the policy, the time and the free disk it says
what to delete and why, so every rule is a table test. `apply_retention` reads the disk,
deletes, and publishes one `checkpoint.pruned` per deletion.

Two checkpoints are never deleted, whatever the disk: the newest (a resume needs it, and a
node may be pulling it) and the best by validation loss (when `keep_best`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Literal

from bus.events import Alert, CheckpointPruned
from bus.publish import Publisher
from checkpoints.settings import CheckpointSettings
from services.trainer.checkpoint import CheckpointInfo, CheckpointStore

log = logging.getLogger(__name__)

Reason = Literal["retention", "disk"]


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 3
    snapshot_time: time = time(3, 0)
    snapshot_days: int = 7  # today's window included; 0 keeps no snapshots
    keep_best: bool = True
    min_free_disk_bytes: int = 0
    tz: tzinfo | None = None  # the zone snapshot_time is in; None: this host's local zone

    @classmethod
    def from_settings(cls, settings: CheckpointSettings) -> RetentionPolicy:
        return cls(
            keep_last=settings.keep_last_checkpoints,
            snapshot_time=settings.snapshot_time,
            snapshot_days=settings.snapshot_days,
            keep_best=settings.keep_best_checkpoint,
            min_free_disk_bytes=settings.min_free_disk_bytes,
        )


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[str, list[str]]  # id → why: newest, best, last, snapshot YYYY-MM-DD
    delete: list[tuple[str, Reason]]  # in deletion order
    protected: frozenset[str]  # never deleted, even for disk
    short_bytes: int = 0  # still missing below the disk threshold after every allowed delete

    @property
    def deleted_ids(self) -> list[str]:
        return [checkpoint for checkpoint, _ in self.delete]


@dataclass(frozen=True)
class Pruned:
    checkpoint_id: str
    reason: Reason
    freed_bytes: int
    disk_free_bytes: int


@dataclass(frozen=True)
class RetentionResult:
    plan: RetentionPlan
    pruned: list[Pruned] = field(default_factory=list)
    quarantine_freed_bytes: int = 0


def _snapshot_ids(
    checkpoints: Sequence[CheckpointInfo], policy: RetentionPolicy, now: datetime
) -> dict[str, str]:
    """id → the day it is the snapshot of: the first checkpoint created in each daily window.

    A day's window runs from its snapshot_time to the next day's; the window holding `now`
    and the `snapshot_days - 1` before it count.
    """
    if policy.snapshot_days <= 0:
        return {}
    zone = policy.tz or now.astimezone().tzinfo
    local_now = now.astimezone(zone)
    today_start = datetime.combine(local_now.date(), policy.snapshot_time, tzinfo=zone)
    if local_now < today_start:
        today_start -= timedelta(days=1)
    earliest = today_start - timedelta(days=policy.snapshot_days - 1)
    chosen: dict[datetime, CheckpointInfo] = {}
    for info in checkpoints:
        created = info.created.astimezone(zone)
        if created < earliest:
            continue
        days = (created - earliest) // timedelta(days=1)
        window = earliest + timedelta(days=days)
        if window > today_start:  # created after `now`: a clock that went back
            window = today_start
        held = chosen.get(window)
        if held is None or (info.created, info.order) < (held.created, held.order):
            chosen[window] = info
    return {info.id: f"snapshot {window.date().isoformat()}" for window, info in chosen.items()}


def plan_retention(
    checkpoints: Sequence[CheckpointInfo],
    policy: RetentionPolicy,
    *,
    now: datetime,
    free_bytes: int | None = None,
) -> RetentionPlan:
    """Decide what to keep and delete. `free_bytes` None skips the disk rule."""
    ordered = sorted(checkpoints, key=lambda info: info.order)
    keep: dict[str, list[str]] = {info.id: [] for info in ordered}
    protected: set[str] = set()
    if ordered:
        keep[ordered[-1].id].append("newest")
        protected.add(ordered[-1].id)
    if policy.keep_best:
        scored = [info for info in ordered if info.val_loss is not None]
        if scored:
            best = min(scored, key=lambda info: (info.val_loss, [-n for n in info.order]))
            keep[best.id].append("best")
            protected.add(best.id)
    for info in ordered[-policy.keep_last :] if policy.keep_last > 0 else []:
        keep[info.id].append("last")
    for checkpoint, why in _snapshot_ids(ordered, policy, now).items():
        keep[checkpoint].append(why)

    delete: list[tuple[str, Reason]] = [
        (info.id, "retention") for info in ordered if not keep[info.id]
    ]
    sizes = {info.id: info.size_bytes for info in ordered}
    short = 0
    if free_bytes is not None and policy.min_free_disk_bytes > 0:
        projected = free_bytes + sum(sizes[checkpoint] for checkpoint, _ in delete)
        for info in ordered:  # oldest first
            if projected >= policy.min_free_disk_bytes:
                break
            if info.id in protected or not keep[info.id]:
                continue
            delete.append((info.id, "disk"))
            projected += sizes[info.id]
        short = max(0, policy.min_free_disk_bytes - projected)
    for checkpoint, _ in delete:
        keep.pop(checkpoint, None)
    return RetentionPlan(
        keep=keep, delete=delete, protected=frozenset(protected), short_bytes=short
    )


def apply_retention(
    store: CheckpointStore,
    policy: RetentionPolicy,
    *,
    publisher: Publisher | None = None,
    now: datetime | None = None,
    disk_free: Callable[[], int] | None = None,
) -> RetentionResult:
    """Plan from the store's listing and the real free disk, delete, and publish each deletion.

    Below the disk threshold, quarantined (corrupt) checkpoints go first: nothing can load
    them. If even deleting every unprotected checkpoint cannot reach the threshold, an
    `alert` (disk_low) says so. Call it after each save, from the process that saves.
    """
    free = disk_free or (lambda: shutil.disk_usage(store.root).free)
    quarantine_freed = 0
    if policy.min_free_disk_bytes > 0 and free() < policy.min_free_disk_bytes:
        for path in store.quarantined():
            quarantine_freed += store.remove_quarantined(path)
            log.warning("disk low: removed quarantined %s", path.name)
    plan = plan_retention(store.list(), policy, now=now or datetime.now(UTC), free_bytes=free())
    pruned = []
    for checkpoint, reason in plan.delete:
        freed = store.delete(checkpoint)
        left = free()
        pruned.append(Pruned(checkpoint, reason, freed, left))
        log.info("pruned %s (%s): %d bytes freed, %d free", checkpoint, reason, freed, left)
        if publisher is not None:
            publisher.publish(
                CheckpointPruned(
                    checkpoint_id=checkpoint, reason=reason, freed_bytes=freed, disk_free_bytes=left
                )
            )
    if plan.short_bytes and publisher is not None:
        publisher.publish(
            Alert(
                level="error",
                source="trainer",
                code="disk_low",
                message=(
                    f"{store.root}: {free()} bytes free, below R3_MIN_FREE_DISK_BYTES="
                    f"{policy.min_free_disk_bytes}, and only the newest and best checkpoints "
                    "are left; free disk space or lower the threshold"
                ),
            )
        )
    return RetentionResult(plan=plan, pruned=pruned, quarantine_freed_bytes=quarantine_freed)
