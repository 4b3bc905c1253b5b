"""`regime3 events`: the bus in the terminal, from an id, optionally following."""

from __future__ import annotations

import json

import click

from bus import keys
from bus.broadcast import LATEST, BroadcastReader, Delivery
from bus.connections import connect
from bus.encoding import to_fields
from bus.errors import RedisUnavailable

SHORT = {key: name for name, key in keys.STREAMS.items()}
ENVELOPE = ("type", "v", "time", "host", "run_id")


def format_line(d: Delivery) -> str:
    fields = to_fields(d.event)
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ENVELOPE)
    return f"{d.entry_id} {SHORT.get(d.stream, d.stream)} {d.event.type} {rest}"


@click.command("events")
@click.option(
    "--stream",
    "streams",
    multiple=True,
    type=click.Choice(sorted(keys.STREAMS)),
    help="A stream to show (repeatable). Default: all.",
)
@click.option(
    "--since",
    default=None,
    help="Show entries after this id (e.g. one printed earlier, or 0 for all).",
)
@click.option(
    "--last",
    default=20,
    show_default=True,
    help="Without --since: how many recent entries of each stream to show first.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_command(
    streams: tuple[str, ...], since: str | None, last: int, follow: bool, as_json: bool
) -> None:
    """Print events from the bus: `<id> <stream> <type> field=value …`."""
    try:
        connection = connect()
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    chosen = [keys.STREAMS[s] for s in (streams or sorted(keys.STREAMS))]
    positions = {}
    for stream in chosen:
        if since is not None:
            positions[stream] = since
        else:
            recent = connection.xrevrange(stream, count=last) if last > 0 else []
            # Start just before the oldest of the last N, so exactly those N are shown.
            positions[stream] = _before(recent[-1][0].decode()) if recent else LATEST
    reader = BroadcastReader(connection, positions, block_ms=1_000)

    def show(batch: list[Delivery]) -> None:
        # Ids order entries within a stream only; across streams, order by event time.
        for d in sorted(batch, key=lambda d: (d.event.time, d.entry_id)):
            if as_json:
                line = {
                    "id": d.entry_id,
                    "stream": SHORT.get(d.stream, d.stream),
                    **d.event.model_dump(mode="json", exclude_none=True),
                }
                click.echo(json.dumps(line, ensure_ascii=False))
            else:
                click.echo(format_line(d))

    try:
        while True:
            batch = reader.read(block_ms=0)
            if batch:
                show(batch)
                continue
            if not follow:
                return
            show(reader.read())
    except KeyboardInterrupt:
        return


def _before(entry_id: str) -> str:
    ms, seq = (int(p) for p in entry_id.split("-"))
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"
