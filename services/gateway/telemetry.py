"""The latest telemetry event of every host, read back from the telemetry stream."""

from __future__ import annotations

from typing import cast

import redis

from bus import keys
from bus.encoding import as_str, from_fields
from bus.errors import MalformedEntry
from bus.events import Telemetry

# Hosts report every few seconds: the newest few hundred entries hold every live host.
SCAN_ENTRIES = 500


def latest_by_host(connection: redis.Redis) -> dict[str, Telemetry]:
    """host → its newest Telemetry among the last SCAN_ENTRIES entries (one round trip)."""
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        connection.xrevrange(keys.STREAM_TELEMETRY, count=SCAN_ENTRIES),
    )
    latest: dict[str, Telemetry] = {}
    for entry_id, raw in entries:
        try:
            event = from_fields(raw, entry_id=as_str(entry_id), stream=keys.STREAM_TELEMETRY)
        except MalformedEntry:
            continue  # the broadcast readers dead-letter it; here it is just not the latest
        if isinstance(event, Telemetry) and event.host not in latest:
            latest[event.host] = event
    return latest
