"""Work reading: a consumer group where each entry is handled once, reclaimed if its consumer
dies, and dead-lettered after repeated failures.

Life of an entry: XREADGROUP delivers it to one consumer → the handler runs → XACK. If the
handler raises, the entry stays pending; once it has been idle `reclaim_idle_ms`
(R3_RECLAIM_IDLE_SECONDS), XAUTOCLAIM hands it to whichever consumer asks next (the same one
retrying, or another if the first died), which also counts a delivery. When a delivery that
fails is number `max_deliveries`, the entry goes to the dead-letter stream with the error and
is acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from bus.deadletter import dead_letter
from bus.encoding import StreamReply, as_str, from_fields
from bus.errors import MalformedEntry
from bus.events import Event
from bus.publish import Publisher
from bus.settings import BusSettings, get_bus_settings

log = logging.getLogger(__name__)

Handler = Callable[[Event, str], None]  # (event, entry id); raise to leave the entry pending


@dataclass(frozen=True)
class Outcome:
    entry_id: str
    result: str  # "acked", "failed" (left pending), "dead-lettered"
    deliveries: int


class WorkGroup:
    def __init__(
        self,
        connection: redis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        start_id: str = "$",
        reclaim_idle_ms: int | None = None,
        max_deliveries: int | None = None,
        block_ms: int = 5_000,
        count: int = 10,
        settings: BusSettings | None = None,
    ) -> None:
        settings = settings or get_bus_settings()
        self.redis = connection
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.reclaim_idle_ms = (
            round(settings.reclaim_idle_seconds * 1000)
            if reclaim_idle_ms is None
            else reclaim_idle_ms
        )
        self.max_deliveries = settings.max_deliveries if max_deliveries is None else max_deliveries
        self.block_ms = block_ms
        self.count = count
        self.publisher = Publisher(connection, settings=settings)
        self._ensure_group(start_id)

    def _ensure_group(self, start_id: str) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _deliveries(self, entry_id: str) -> int:
        rows = cast(
            list[dict[str, Any]],
            self.redis.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1),
        )
        return int(rows[0]["times_delivered"]) if rows else 1

    def reclaim(self) -> list[tuple[str, dict[bytes, bytes], int]]:
        """Entries idle past the threshold, now ours, with how often each was delivered."""
        reply = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.reclaim_idle_ms,
            start_id="0-0",
            count=self.count,
        )
        entries = cast(list[tuple[bytes, dict[bytes, bytes] | None]], reply[1])
        out = []
        for entry_raw, raw in entries:
            entry_id = as_str(entry_raw)
            if raw is None:  # trimmed away while pending: nothing left to handle
                self.redis.xack(self.stream, self.group, entry_id)
                continue
            out.append((entry_id, raw, self._deliveries(entry_id)))
        return out

    def run_once(self, block_ms: int | None = None) -> list[Outcome]:
        """Handle reclaimed entries, then new ones (blocking only if there were none)."""
        work = self.reclaim()
        if not work:
            block = self.block_ms if block_ms is None else block_ms
            reply = cast(
                StreamReply,
                self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.count,
                    block=block or None,
                ),
            )
            for _stream, entries in reply or []:
                work.extend((as_str(eid), raw, 1) for eid, raw in entries)
        return [self._handle(entry_id, raw, n) for entry_id, raw, n in work]

    def _handle(self, entry_id: str, raw: dict[bytes, bytes], deliveries: int) -> Outcome:
        try:
            event = from_fields(raw, entry_id=entry_id, stream=self.stream)
        except MalformedEntry as exc:
            self._dead_letter(entry_id, raw, exc.reason, deliveries)
            return Outcome(entry_id, "dead-lettered", deliveries)
        try:
            self.handler(event, entry_id)
        except Exception as exc:  # the handler's failure is data here, not a crash
            error = f"{type(exc).__name__}: {exc}"
            if deliveries >= self.max_deliveries:
                self._dead_letter(entry_id, raw, error, deliveries)
                return Outcome(entry_id, "dead-lettered", deliveries)
            log.warning(
                "%s %s failed (delivery %d of %d), will retry after %d ms: %s",
                self.stream,
                entry_id,
                deliveries,
                self.max_deliveries,
                self.reclaim_idle_ms,
                error,
            )
            return Outcome(entry_id, "failed", deliveries)
        self.redis.xack(self.stream, self.group, entry_id)
        return Outcome(entry_id, "acked", deliveries)

    def _dead_letter(self, entry_id: str, raw: dict[bytes, bytes], error: str, n: int) -> None:
        dead_letter(
            self.publisher,
            stream=self.stream,
            entry_id=entry_id,
            raw=raw,
            error=error,
            deliveries=n,
            group=self.group,
            consumer=self.consumer,
        )
        self.redis.xack(self.stream, self.group, entry_id)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; a Redis hiccup is logged and retried, never fatal."""
        while not stop.is_set():
            try:
                self.run_once()
            except redis.ConnectionError as exc:
                log.error("Redis connection lost (%s); retrying in 1 s", exc)
                stop.wait(1.0)
