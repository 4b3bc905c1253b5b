"""Broadcast reading: blocking XREAD from a given id, so any reader resumes where it left off.

Every reader sees every entry; nothing is acknowledged. A reader that disconnects keeps the
last id it handled and passes it back in to continue with no gap and no duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from bus.deadletter import dead_letter
from bus.encoding import StreamReply, as_str, from_fields
from bus.errors import MalformedEntry
from bus.events import Event
from bus.publish import Publisher

log = logging.getLogger(__name__)

LATEST = "$"  # only entries added after the first read
EARLIEST = "0-0"


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    event: Event


class BroadcastReader:
    """Reads several streams from per-stream ids; `positions` always holds the resume ids."""

    def __init__(
        self,
        connection: redis.Redis,
        positions: Mapping[str, str],
        *,
        block_ms: int = 5_000,
        count: int = 500,
        publisher: Publisher | None = None,
    ) -> None:
        self.redis = connection
        self.positions = dict(positions)
        self.block_ms = block_ms
        self.count = count
        self.publisher = publisher or Publisher(connection)
        self._resolve_latest()

    def _resolve_latest(self) -> None:
        # "$" means "after the newest entry at the time of the call": pin it to a real id now,
        # so a reader that reconnects between two reads does not skip what arrived meanwhile.
        for stream, pos in self.positions.items():
            if pos == LATEST:
                info = self.redis.xinfo_stream(stream) if self.redis.exists(stream) else None
                self.positions[stream] = as_str(info["last-generated-id"]) if info else EARLIEST

    def read(self, block_ms: int | None = None) -> list[Delivery]:
        """One XREAD: waits up to `block_ms` (None: the reader's default; 0: no wait)."""
        block = self.block_ms if block_ms is None else block_ms
        positions: dict[Any, Any] = self.positions
        reply = cast(
            StreamReply, self.redis.xread(positions, count=self.count, block=block or None)
        )
        out: list[Delivery] = []
        for stream_raw, entries in reply or []:
            stream = as_str(stream_raw)
            for entry_raw, raw in entries:
                entry_id = as_str(entry_raw)
                self.positions[stream] = entry_id
                try:
                    event = from_fields(raw, entry_id=entry_id, stream=stream)
                except MalformedEntry as exc:
                    log.warning("skipping malformed entry %s %s: %s", stream, entry_id, exc)
                    dead_letter(
                        self.publisher, stream=stream, entry_id=entry_id, raw=raw, error=exc.reason
                    )
                    continue
                out.append(Delivery(stream, entry_id, event))
        return out

    def __iter__(self) -> Iterator[Delivery]:
        """Forever: blocks between bursts; stop by breaking out of the loop."""
        while True:
            yield from self.read()
