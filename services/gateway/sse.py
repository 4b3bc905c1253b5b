"""GET /events: server-sent events from the bus streams, resumable with no gap and no duplicate.

Frames (docs/gateway.md): `id: <cursor>`, `event: <bus event type>`, `data: <event JSON with
"stream" and "entry_id">`. The cursor carries the client's position in every stream it
follows (see services.gateway.cursor), so `Last-Event-ID` (sent by a browser's EventSource
on reconnect, and preferred) or `?since=` resumes all of them at once.

A resuming client is first caught up from Redis (XREAD from its positions, on its own
reads) while the hub already buffers live events for it; live frames at or before a
position it was caught up to are skipped, so the switch from history to live has neither a
gap nor a duplicate. A client whose buffer overflows gets `event: lagged` with
`{"resume": <cursor>}` and the stream ends; reconnecting with that cursor continues exactly
after the last frame it was sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import redis
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from bus import keys
from bus.broadcast import BroadcastReader
from services.gateway import cursor
from services.gateway.errors import BadRequest, Unavailable
from services.gateway.fanout import Frame, Hub, Subscriber, encode_frames

router = APIRouter()

# What a client that names no streams follows: every stream but the dead letters. `study`
# (regime3 study modes) came last; a cursor from before it simply has no study pair, and
# cursor.parse starts that stream live for it.
DEFAULT_STREAMS = (
    "training",
    "jobs",
    "checkpoints",
    "models",
    "eval",
    "telemetry",
    "alerts",
    "study",
)
MAX_FRAMES_PER_WRITE = 256  # frames joined into one socket write under load
CATCHUP_COUNT = 500


def followed_streams(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset(DEFAULT_STREAMS)
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - keys.STREAMS.keys()
    if unknown or not names:
        raise BadRequest(
            f"streams={text!r}: unknown {sorted(unknown)}; choose among {', '.join(keys.STREAMS)}"
        )
    return frozenset(names)


class ClientStream:
    """One client's positions and the frames it is sent, as SSE text."""

    def __init__(self, hub: Hub, sub: Subscriber, positions: dict[str, str]) -> None:
        self.hub = hub
        self.sub = sub
        # Kept in the cursor's canonical order, so each frame's id is a plain join.
        self.positions = {s: positions[s] for s in sorted(positions, key=cursor.ORDER.__getitem__)}
        self.keys = {s: cursor.id_key(p) for s, p in positions.items()}

    def cursor(self) -> str:
        return ",".join([f"{s}:{p}" for s, p in self.positions.items()])

    def render(self, frames: list[Frame]) -> str:
        parts = []
        for f in frames:
            if f.key <= self.keys[f.stream]:
                continue  # already sent during catch-up
            self.positions[f.stream] = f.entry_id
            self.keys[f.stream] = f.key
            parts.append(f"id: {self.cursor()}\nevent: {f.event_type}\ndata: {f.data}\n\n")
        self.hub.events_delivered_total += len(parts)
        return "".join(parts)

    def lagged_frame(self) -> str:
        resume = self.cursor()
        return f"event: lagged\ndata: {json.dumps({'resume': resume})}\n\n"

    async def catch_up(self, start: dict[str, str]) -> AsyncIterator[bytes]:
        """History from `start` up to the present, read with this client's own XREADs and
        sent in time order across streams (entry ids are times, shared by all streams)."""
        reader = BroadcastReader(
            self.hub.redis,
            {keys.STREAMS[s]: p for s, p in start.items()},
            count=CATCHUP_COUNT,
        )
        pending: list[Frame] = []
        while not self.sub.lagged:
            deliveries = await asyncio.to_thread(reader.read, 0)
            pending.extend(encode_frames(deliveries))
            pending.sort(key=lambda f: f.key)
            # A stream that filled its batch may have older entries than another stream's
            # tail still unread: hold back everything after the earliest such batch end.
            full: dict[str, tuple[int, int]] = {}
            for stream in {d.stream for d in deliveries}:
                batch = [d for d in deliveries if d.stream == stream]
                if len(batch) >= CATCHUP_COUNT:
                    full[stream] = cursor.id_key(batch[-1].entry_id)
            cutoff = min(full.values()) if full else None
            ready = pending if cutoff is None else [f for f in pending if f.key <= cutoff]
            pending = [] if cutoff is None else [f for f in pending if f.key > cutoff]
            text = self.render(ready)
            if text:
                yield text.encode()
            if not deliveries:
                return

    async def frames(self, start: dict[str, str]) -> AsyncIterator[bytes]:
        """The response body: catch-up, then live frames; bytes, so sse-starlette writes
        them as they are (a str would be wrapped as one event's data)."""
        try:
            if start:
                async for text in self.catch_up(start):
                    yield text
            buffer = self.sub.buffer
            while True:
                if self.sub.lagged:
                    yield self.lagged_frame().encode()
                    return
                if not buffer:
                    self.sub.wakeup.clear()
                    await self.sub.wakeup.wait()
                    continue
                n = min(len(buffer), MAX_FRAMES_PER_WRITE)
                live = self.render([buffer.popleft() for _ in range(n)])
                if live:
                    yield live.encode()
        finally:
            self.hub.unsubscribe(self.sub)


class ClientResponse(EventSourceResponse):
    """The SSE response that unsubscribes its client however it ends, even before the
    first frame (a client that hangs up at once never starts the generator)."""

    def __init__(
        self, client: ClientStream, start: dict[str, str], *, ping: float, send_timeout: float
    ) -> None:
        super().__init__(client.frames(start), ping=ping, send_timeout=send_timeout)
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.client.hub.unsubscribe(self.client.sub)


@router.get("/events")
async def events(
    request: Request,
    streams: str | None = Query(None, description="Comma-separated short stream names."),
    since: str | None = Query(None, description="A cursor, an entry id, or 0 to replay."),
    last_event_id: str | None = Header(None),
) -> ClientResponse:
    followed = followed_streams(streams)
    resume_from = last_event_id or since  # EventSource reconnects send the header: it wins
    try:
        start = cursor.parse(resume_from, followed) if resume_from else {}
    except cursor.CursorError as exc:
        raise BadRequest(str(exc)) from None
    hub: Hub = request.app.state.hub
    settings = request.app.state.settings
    try:
        sub = await hub.subscribe(followed)  # buffering live events before any catch-up read
    except redis.RedisError as exc:
        raise Unavailable(
            f"the event streams cannot be read: Redis at {hub.redis_url} does not answer "
            f"({exc}); the gateway keeps retrying, reconnect in a few seconds"
        ) from None
    positions = {s: start.get(s, hub.dispatched[s]) for s in followed}
    client = ClientStream(hub, sub, positions)
    return ClientResponse(
        client,
        start,
        ping=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout_seconds,
    )
