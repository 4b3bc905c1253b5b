"""The SSE cursor: one `id:` that carries the position of every stream a client follows.

A client of `/events` may follow several streams at once, and Redis entry ids are per
stream, so a single entry id cannot say where a client stands. Every frame's `id:` is
therefore the client's position in *each* of its streams after that frame:

    training:1732412345678-3,jobs:1732412300000-0,alerts:0-0

- one `<short stream name>:<entry id>` pair per followed stream, comma-separated, in the
  order of `bus.keys.STREAMS`; `0-0` means "nothing delivered from this stream yet";
- a frame updates only its own stream's pair; the others repeat what was delivered before;
- resuming (`Last-Event-ID: <cursor>` or `?since=<cursor>`) reads every stream strictly
  after its pair, so nothing is missed and nothing is sent twice, whichever stream the last
  frame came from, and across a gateway restart (the positions are Redis ids, not state in
  the gateway);
- a followed stream missing from the cursor starts live (from now);
- `since=0` replays everything the streams still retain; `since=<entry id>` (a bare
  `1732412345678-0`) starts every stream after that id, which is a time: Redis entry ids
  begin with the millisecond they were added.

Clients treat the cursor as opaque and hand back the last one they saw.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bus import keys

EARLIEST = "0-0"
# fullmatch, not `$` (which also matches before a trailing newline: "5-0\n" would pass, go
# into the next frame's `id:` line, cut the SSE framing, and a browser would reconnect in a
# loop). Each part is an unsigned 64-bit integer in Redis: a larger one is refused here,
# not by Redis once the stream has started.
_ENTRY_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
U64_MAX = 2**64 - 1
SHORT_BY_KEY = {key: short for short, key in keys.STREAMS.items()}
ORDER = {short: i for i, short in enumerate(keys.STREAMS)}


class CursorError(ValueError):
    """A cursor the gateway cannot read; the message says which part and what is expected."""


def _entry_id(text: str, where: str) -> str:
    found = _ENTRY_ID.fullmatch(text)
    if not found:
        raise CursorError(
            f"{where}: {text!r} is not a Redis entry id (<milliseconds>-<sequence>); "
            "pass back the `id:` of the last event received, or since=0 to replay"
        )
    if any(int(part) > U64_MAX for part in found.groups() if part is not None):
        raise CursorError(
            f"{where}: {text!r} is past the largest Redis entry id (each part at most "
            f"{U64_MAX}); pass back the `id:` of the last event received, or since=0"
        )
    return text if "-" in text else f"{text}-0"


def parse(text: str, followed: Iterable[str]) -> dict[str, str]:
    """Positions (short stream name → entry id) for the followed streams present in `text`.

    A stream of `followed` absent from the answer starts live; names in the cursor that the
    client no longer follows are ignored (it may have narrowed `streams=`).
    """
    followed = list(followed)
    if text == "0":
        return dict.fromkeys(followed, EARLIEST)
    if ":" not in text:
        start = _entry_id(text, "since")
        return dict.fromkeys(followed, start)
    positions: dict[str, str] = {}
    for part in text.split(","):
        name, sep, entry = part.partition(":")
        if not sep or name not in keys.STREAMS:
            raise CursorError(
                f"cursor part {part!r}: expected <stream>:<entry id> with a stream among "
                f"{', '.join(keys.STREAMS)}"
            )
        if name in followed:
            positions[name] = _entry_id(entry, f"cursor part {part!r}")
    return positions


def encode(positions: Mapping[str, str]) -> str:
    """The cursor for `positions` (short name → entry id), in the canonical stream order."""
    return ",".join(
        f"{name}:{positions[name]}" for name in sorted(positions, key=ORDER.__getitem__)
    )


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable pair: ids compare by milliseconds, then by sequence."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
