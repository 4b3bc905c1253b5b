"""Whether the trainer's "training" is still true: a kill -9 leaves the status hash saying so.

The trainer's worker SETs `r3:heartbeat:trainer:<host>` every 10 s while a job runs, with a
TTL of about 30 s (bus.worker). A status of `training` older than STALE_AFTER_SECONDS with
no live heartbeat is shown as `crashed`: within STALE_AFTER_SECONDS of the last word from a
dead trainer, the status JSON and /metrics stop saying it trains.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bus.keys import heartbeat_key
from bus.status import TrainingStatus

STALE_AFTER_SECONDS = 45.0


def trainer_heartbeat_alive(redis: Any) -> bool:
    """Some trainer (on any host) has a live heartbeat key now."""
    return any(True for _ in redis.scan_iter(match=heartbeat_key("trainer", "*"), count=100))


def status_age_seconds(status: TrainingStatus, now: datetime | None = None) -> float | None:
    if not status.timestamp:
        return None
    try:
        stamp = datetime.fromisoformat(status.timestamp)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        # The trainer writes local time without an offset (services.trainer.metrics): read
        # as UTC, a host east of Greenwich showed a dead trainer as training for hours.
        stamp = stamp.astimezone()
    return ((now or datetime.now(UTC)) - stamp).total_seconds()


def is_stale(status: TrainingStatus, redis: Any, now: datetime | None = None) -> bool:
    """`training` with no word from the trainer for STALE_AFTER_SECONDS and no heartbeat."""
    if status.status != "training":
        return False
    age = status_age_seconds(status, now)
    if age is None or age <= STALE_AFTER_SECONDS:
        return False
    return not trainer_heartbeat_alive(redis)


def shown(status: TrainingStatus, redis: Any) -> TrainingStatus:
    """The status as it is true now: a stale `training` is `crashed`."""
    if is_stale(status, redis):
        return status.model_copy(update={"status": "crashed"})
    return status
