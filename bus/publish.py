"""Publishing events: XADD with approximate MAXLEN trimming, one call or pipelined."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from bus import keys
from bus.encoding import to_fields
from bus.events import Event
from bus.settings import BusSettings, get_bus_settings


class Publisher:
    """Stamps `host` and `run_id` on events and appends them to their stream.

    Trimming is approximate (`MAXLEN ~`): Redis trims whole macro nodes, which keeps XADD
    O(1) amortized; a stream may hold slightly more than its cap, never unboundedly more.
    """

    def __init__(self, connection: redis.Redis, *, settings: BusSettings | None = None) -> None:
        self.redis = connection
        self.settings = settings or get_bus_settings()

    def maxlen(self, stream: str) -> int:
        short = next((name for name, key in keys.STREAMS.items() if key == stream), stream)
        if short in self.settings.stream_maxlen_overrides:
            return self.settings.stream_maxlen_overrides[short]
        if stream == keys.STREAM_TRAINING:
            return self.settings.stream_maxlen_training
        return self.settings.stream_maxlen_default

    def _stamp(self, event: Event) -> Event:
        update = {}
        if not event.host:
            update["host"] = self.settings.host_name
        if not event.run_id:
            update["run_id"] = self.settings.run_id
        return event.model_copy(update=update) if update else event

    def publish(self, event: Event) -> str:
        """Append one event; returns its entry id (which SSE clients see as `id:`)."""
        event = self._stamp(event)
        fields: dict[Any, Any] = to_fields(event)  # redis-py's stubs want a wider dict
        entry_id = self.redis.xadd(
            event.STREAM, fields, maxlen=self.maxlen(event.STREAM), approximate=True
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def publish_many(self, events: Iterable[Event]) -> list[str]:
        """Append many events in one round trip (a pipeline without MULTI)."""
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            event = self._stamp(event)
            fields: dict[Any, Any] = to_fields(event)
            pipe.xadd(event.STREAM, fields, maxlen=self.maxlen(event.STREAM), approximate=True)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]
