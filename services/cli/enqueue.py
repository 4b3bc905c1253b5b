"""`regime3 enqueue FILE`: check a dataset, store it by content, queue a training job."""

from __future__ import annotations

from pathlib import Path

import click

from bus import queues
from bus.connections import connect
from bus.errors import RedisUnavailable
from bus.settings import get_bus_settings
from services.dataset_store import DatasetError, DatasetStore


@click.command("enqueue")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--priority",
    type=click.Choice(["high", "normal", "low"]),
    default="normal",
    show_default=True,
    help="Which train queue: a worker takes high before normal before low.",
)
def enqueue_command(file: Path, priority: str) -> None:
    """Queue FILE (JSONL, one {"messages": [...]} a line) for training."""
    settings = get_bus_settings()
    try:
        connection = connect()
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        stored = DatasetStore(settings.layout.datasets).add(file)
    except DatasetError as exc:
        raise click.ClickException(f"{exc}. Nothing was queued.") from None
    job = queues.enqueue(
        connection,
        queues.TRAIN_FILE,
        kind="train",
        priority=priority,
        kwargs={"path": str(stored.path.resolve()), "name": stored.name, "sha256": stored.sha256},
        description=f"train {stored.name} ({stored.lines} examples)",
    )
    click.echo(job.id)
    click.echo(
        f"queued {stored.name}: {stored.lines} examples, {stored.size_bytes} bytes, "
        f"train-{priority}, dataset {stored.sha256[:12]}",
        err=True,
    )
