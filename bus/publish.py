"""Publishing events: XADD with approximate MAXLEN trimming, one call or pipelined."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import redis
from hiredis import pack_command

from bus import keys
from bus.encoding import as_str, to_fields
from bus.events import Event
from bus.settings import BusSettings, get_bus_settings


class Publisher:
    """Stamps `host` and `run_id` on events and appends them to their stream.

    Trimming is approximate (`MAXLEN ~`): Redis trims whole macro nodes, which keeps XADD
    O(1) amortized; a stream may hold slightly more than its cap, never unboundedly more.
    """

    def __init__(self, connection: redis.Redis, *, settings: BusSettings | None = None) -> None:
        self.redis = connection
        self.settings = settings = settings or get_bus_settings()
        unknown = settings.stream_maxlen_overrides.keys() - keys.STREAMS.keys()
        if unknown:
            raise ValueError(
                f"R3_STREAM_MAXLEN_OVERRIDES names unknown streams {sorted(unknown)}; "
                f"use short names from: {', '.join(sorted(keys.STREAMS))}"
            )
        # Resolved once: publish() runs every training step.
        self._maxlen = {
            key: settings.stream_maxlen_overrides.get(
                short,
                settings.stream_maxlen_training
                if key == keys.STREAM_TRAINING
                else settings.stream_maxlen_default,
            )
            for short, key in keys.STREAMS.items()
        }

    def maxlen(self, stream: str) -> int:
        return self._maxlen.get(stream, self.settings.stream_maxlen_default)

    def fields(self, event: Event) -> dict[Any, Any]:
        """The entry for `event`, with this host and run stamped where the event has none.

        Stamping the dict, not a model copy, keeps the publish path about 15 µs shorter.
        """
        fields: dict[Any, Any] = to_fields(event)
        if not event.host:
            fields["host"] = self.settings.host_name
        if not event.run_id:
            fields["run_id"] = self.settings.run_id
        return fields

    def _xadd(self, event: Event) -> list[Any]:
        # XADD <stream> MAXLEN ~ <cap> * field value …, built directly: redis-py's xadd()
        # rebuilds the same list with checks we do not need on every training step.
        args: list[Any] = ["XADD", event.STREAM, "MAXLEN", "~", self.maxlen(event.STREAM), "*"]
        for item in self.fields(event).items():
            args.extend(item)
        return args

    def publish(self, event: Event) -> str:
        """Append one event; returns its entry id (which SSE clients see as `id:`)."""
        entry_id = self.redis.execute_command(*self._xadd(event))  # type: ignore[no-untyped-call]
        return as_str(entry_id)

    def publish_many(self, events: Iterable[Event]) -> list[str]:
        """Append many events in one round trip.

        Packed by hiredis and written on one pooled connection rather than through
        redis-py's Pipeline, whose per-command bookkeeping cost a third of the throughput
        (13-16k vs 19-21k events/s measured in one run here). A batch that breaks midway
        drops its connection, so no unread reply can reach the pool's next user.
        """
        commands = [self._xadd(event) for event in events]
        if not commands:
            return []
        # hiredis's stub types the argument as a 1-tuple; it takes any length.
        payload = b"".join(pack_command(cast(Any, tuple(args))) for args in commands)
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command([payload])  # type: ignore[no-untyped-call]
            return [as_str(connection.read_response()) for _ in commands]
        except BaseException:
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(connection)
