"""`regime3 up`: every service of both hosts on this machine, without Docker."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

import click

from bus import keys
from bus.connections import connect
from bus.settings import get_bus_settings
from services.supervisor import SERVICES, Supervisor
from settings.layout import DataLayout


def _demo_env(env: dict[str, str]) -> bool:
    """With no model configured, the embedded model trains on the demo with the recipe that
    makes it learn on a CPU; every variable the user set (in the environment or in `.env`)
    is left alone. True when applied."""
    from services.feeder.config import get_feeder_settings
    from services.feeder.demo import apply_demo_recipe, user_value

    if user_value("R3_MODEL", env):
        return False
    apply_demo_recipe(env, get_feeder_settings())
    return True


def _seed(env: dict[str, str]) -> None:
    """Queue the demo's data (in the background: services start meanwhile), then give the
    feeder its go-ahead (R3_FEEDER_AWAIT_SEED), whether seeding worked or not."""
    from services.feeder.config import get_feeder_settings
    from services.feeder.demo import demo_eval_sets, seed_queue, user_value
    from services.feeder.feeder import SEEDED_FIELD

    settings = get_feeder_settings()
    connection = connect(env["R3_REDIS_URL"])
    try:
        jobs = seed_queue(
            connection,
            settings,
            # The sets the trainer will score: the user's (environment or .env), else the demo's.
            validation_sets=user_value("R3_FIXED_EVAL_SETS", env) or demo_eval_sets(settings),
            validation_size=int(user_value("R3_EVAL_EXAMPLES", env) or "64"),
        )
    except Exception as exc:  # the services run on; say why the queue stayed empty
        click.echo(f"regime3 up: seeding the demo data failed: {exc}", err=True)
        return
    finally:
        connection.hset(keys.FEEDER_STATUS, SEEDED_FIELD, env["R3_FEEDER_AWAIT_SEED"])
    if jobs:
        click.echo(
            f"regime3 up: queued {len(jobs)} demo files ({settings.demo_seed_examples} "
            f"{settings.demo_domain} examples, level {settings.demo_difficulty}, "
            f"{settings.demo_mode}) on train-normal",
            err=True,
        )


def _local_urls() -> tuple[str, str]:
    """The gateway's and the node's base URLs on this machine, from the ports those services
    will read (their settings: environment or .env)."""
    from services.gateway.config import GatewaySettings
    from services.node.config import NodeSettings

    return (
        f"http://127.0.0.1:{GatewaySettings().gateway_port}",
        f"http://127.0.0.1:{NodeSettings().node_port}",
    )


def _one_machine_env(env: dict[str, str], data_dir: Path) -> str | None:
    """Both hosts on this machine: the node finds the gateway (and its own API) on the ports
    chosen here, and shares a token with the gateway, kept in the data directory so a restart
    keeps it. Without one the gateway serves no checkpoint and takes no shard: no hot-swap.
    Returns a line saying where a new token was written, or None."""
    gateway_url, node_url = _local_urls()
    env.setdefault("R3_GATEWAY_URL", gateway_url)
    env.setdefault("R3_NODE_URL", node_url)
    if env.get("R3_NODE_TOKEN"):
        return None
    path = DataLayout(data_dir).node_token_file
    token = path.read_text().strip() if path.is_file() else ""
    if token:
        env["R3_NODE_TOKEN"] = token
        return None
    # Written under a temporary name and renamed: a crash never leaves an empty token behind.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    part = path.with_name(f".node-token.{os.getpid()}")
    token = secrets.token_urlsafe(32)
    descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(token)
    os.replace(part, path)
    env["R3_NODE_TOKEN"] = token
    return f"regime3 up: generated the node token (gateway <-> node) in {path}"


def _where_to_look(redis_url: str) -> str:
    gateway_url, node_url = _local_urls()
    return "\n".join(
        [
            f"regime3 up: dashboard  {gateway_url}",
            f"regime3 up: node API   {node_url}/v1/chat/completions",
            f"regime3 up: redis-cli -u {redis_url} HGETALL {keys.STATUS_TRAINING}",
            f"regime3 up: redis-cli -u {redis_url} XREVRANGE {keys.STREAM_EVAL} + - COUNT 1",
            f"regime3 up: redis-cli -u {redis_url} XREVRANGE {keys.EVOLUTION} + - COUNT 1",
            f"regime3 up: redis-cli -u {redis_url} HGETALL {keys.FEEDER_STATUS}",
        ]
    )


@click.command("up")
@click.option(
    "--host",
    "host",
    type=click.Choice(["all", "trainer", "node"]),
    default="all",
    show_default=True,
    help="Run only one host's processes (two machines, no Docker).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([s.name for s in SERVICES]),
    help="Run only these services (repeatable).",
)
@click.option(
    "--seed/--no-seed",
    default=True,
    show_default=True,
    help="With no model configured (R3_MODEL unset) and empty training queues, queue the "
    "demo's data and train with the demo's recipe.",
)
def up_command(host: str, only: tuple[str, ...], seed: bool) -> None:
    """Start Redis (a private one if none answers) and every service; Ctrl-C stops all."""
    settings = get_bus_settings()
    supervisor = Supervisor()
    supervisor.ensure_redis(settings.redis_url, settings.data_dir)
    env = dict(os.environ, R3_REDIS_URL=settings.redis_url, PYTHONUNBUFFERED="1")
    chosen = [
        s for s in SERVICES if (host == "all" or s.host == host) and (not only or s.name in only)
    ]
    if host == "all":
        note = _one_machine_env(env, settings.data_dir)
        if note:
            click.echo(note, err=True)
    elif not env.get("R3_NODE_TOKEN"):
        click.echo(
            "regime3 up: R3_NODE_TOKEN is not set: set the same value on both hosts, or the "
            "node can pull no checkpoint and upload no shard",
            err=True,
        )
    trains_here = any(s.name == "trainer" for s in chosen)
    if seed and trains_here and _demo_env(env):
        # The feeder, started beside the seeding thread, must not read the still-empty queue
        # as "nothing to train" and queue a generate job: it waits for this id (one per up).
        env["R3_FEEDER_AWAIT_SEED"] = secrets.token_hex(8)
        threading.Thread(target=_seed, args=(env,), name="demo-seed", daemon=True).start()
    supervisor.add_services(chosen, env)
    click.echo(_where_to_look(settings.redis_url), err=True)
    raise SystemExit(supervisor.run())
