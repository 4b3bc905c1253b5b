"""`regime3 up`: every service of both hosts on this machine, without Docker."""

from __future__ import annotations

import os

import click

from bus.settings import get_bus_settings
from services.supervisor import SERVICES, Supervisor


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
def up_command(host: str, only: tuple[str, ...]) -> None:
    """Start Redis (a private one if none answers) and every service; Ctrl-C stops all."""
    settings = get_bus_settings()
    supervisor = Supervisor()
    supervisor.ensure_redis(settings.redis_url, settings.data_dir)
    env = dict(os.environ, R3_REDIS_URL=settings.redis_url, PYTHONUNBUFFERED="1")
    chosen = [
        s for s in SERVICES if (host == "all" or s.host == host) and (not only or s.name in only)
    ]
    supervisor.add_services(chosen, env)
    raise SystemExit(supervisor.run())
