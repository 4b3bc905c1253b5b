"""`regime3 status`: queues, workers, training and nodes at a glance (`--json` for scripts)."""

from __future__ import annotations

import json
from typing import Any

import click
import redis
from rq import Worker

from bus import keys, liveness, queues
from bus.connections import connect
from bus.errors import RedisUnavailable
from bus.status import StatusStore


def _node_names(connection: redis.Redis) -> list[str]:
    """Nodes that reported telemetry, and nodes whose registry has an active model."""
    names = {raw.decode() for raw in connection.smembers(keys.NODES)}  # type: ignore[union-attr]
    pattern = keys.node_active_model_key("*")
    prefix, suffix = pattern.split("*")
    for raw in connection.scan_iter(match=pattern, count=500):
        key = raw.decode()
        names.add(key[len(prefix) : len(key) - len(suffix)])
    return sorted(names)


def _figure(value: Any) -> str:
    """A loss or CE as a human reads it: 4 significant digits, `-` when there is none."""
    return "-" if value is None else f"{value:.4g}"


def collect(connection: redis.Redis) -> dict[str, Any]:
    """Everything `status` shows, as plain data."""
    depths = queues.depths(connection)
    workers = []
    for w in Worker.all(connection=connection):
        job = w.get_current_job()
        workers.append(
            {
                "name": w.name,
                "queues": w.queue_names(),
                "state": w.get_state(),
                "job": None if job is None else {"id": job.id, "description": job.description},
            }
        )
    # A kill -9 leaves the hash saying `training`: shown as `crashed` once it is stale.
    training = liveness.shown(StatusStore(connection).read(), connection).model_dump(
        include={
            "status",
            "current_step",
            "total_steps",
            "loss",
            "streaming_ce",
            "learning_rate",
            "current_file",
            "batch_queue_size",
            "tokens_per_sec",
            "eta_seconds",
            "accuracy_percent",
            "fixed_eval_em",
            "timestamp",
        }
    )
    nodes = {}
    for name in _node_names(connection):
        fields = connection.hgetall(keys.node_status_key(name))
        node = {k.decode(): v.decode() for k, v in fields.items()}  # type: ignore[union-attr]
        # The registry's active model is its own key (what /models and set_active use); the
        # status hash has only what telemetry reports.
        active = connection.get(keys.node_active_model_key(name))
        node["active_model"] = active.decode() if isinstance(active, bytes) else None
        nodes[name] = node
    return {
        "queues": {
            kind: {p: depths[f"{kind}-{p}"] for p in keys.PRIORITIES} for kind in ("train", "node")
        },
        "workers": workers,
        "training": training,
        "nodes": nodes,
    }


def render(data: dict[str, Any]) -> str:
    lines = ["queues      high  normal  low"]
    for kind, d in data["queues"].items():
        lines.append(f"  {kind:<8} {d['high']:>5} {d['normal']:>7} {d['low']:>4}")
    lines.append(f"workers     {len(data['workers'])}")
    for w in data["workers"]:
        doing = f"running {w['job']['description'] or w['job']['id']}" if w["job"] else w["state"]
        lines.append(f"  {w['name']}  [{', '.join(w['queues'])}]  {doing}")
    t = data["training"]
    progress = f"{t['current_step']}/{t['total_steps'] or '?'}"
    lines.append(
        f"training    {t['status']}  step {progress}  loss {_figure(t['loss'])}  "
        f"file {t['current_file'] or '-'}"
    )
    lines.append(f"nodes       {len(data['nodes'])}")
    for name, n in data["nodes"].items():
        lines.append(f"  {name}  active {n.get('active_model') or '-'}")
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def status_command(as_json: bool) -> None:
    """Queue depths by priority, workers and their jobs, training status, nodes' models."""
    try:
        data = collect(connect())
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(data, indent=2, default=str) if as_json else render(data))
