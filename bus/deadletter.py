"""The dead-letter stream: where entries go that no reader could use or handle."""

from __future__ import annotations

import logging

import redis

from bus import keys
from bus.encoding import decode_raw
from bus.events import DeadLetter
from bus.publish import Publisher

log = logging.getLogger(__name__)


def dead_letter(
    publisher: Publisher,
    *,
    stream: str,
    entry_id: str,
    raw: dict[bytes, bytes] | dict[str, str],
    error: str,
    deliveries: int = 0,
    group: str | None = None,
    consumer: str | None = None,
) -> bool:
    """Record a bad entry once, however many readers met it; True if this call recorded it.

    Broadcast readers all see the same malformed entry, so a SET NX marker (1-day TTL)
    decides which one writes the dead letter.
    """
    r: redis.Redis = publisher.redis
    if not r.set(
        keys.deadletter_seen_key(stream, entry_id), "1", nx=True, ex=keys.DEADLETTER_SEEN_TTL_S
    ):
        return False
    try:
        fields = decode_raw(raw)
    except UnicodeDecodeError:
        fields = {repr(k): repr(v) for k, v in raw.items()}
    log.warning("dead-lettering %s %s: %s", stream, entry_id, error)
    publisher.publish(
        DeadLetter(
            source_stream=stream,
            source_id=entry_id,
            error=error,
            deliveries=deliveries,
            group=group,
            consumer=consumer,
            entry=fields,
        )
    )
    return True
