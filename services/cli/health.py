"""`regime3 health SERVICE`: exit 0 when that service on this host is alive (compose healthchecks).

HTTP services answer `/healthz` on their port; RQ workers (trainer, node-worker) are alive
when a worker on their queues, on this host, heartbeated within its TTL; the inbox writes a
heartbeat key after every pass (`bus.keys.HEARTBEAT`).
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import click
import httpx
from rq import Worker

from bus import queues
from bus.connections import RedisUnavailable, connect
from bus.keys import heartbeat_key
from bus.settings import get_bus_settings

HTTP_SERVICES = ("gateway", "node")
WORKER_QUEUES = {"trainer": "train", "node-worker": "node"}
SERVICES = (*HTTP_SERVICES, *WORKER_QUEUES, "inbox")


def _port(service: str) -> int:
    # The port the service itself reads (its settings: environment or .env).
    if service == "gateway":
        from services.gateway.config import GatewaySettings

        return GatewaySettings().gateway_port
    from services.node.config import NodeSettings

    return NodeSettings().node_port


def check_http(service: str, timeout: float = 3.0) -> str:
    url = f"http://127.0.0.1:{_port(service)}/healthz"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{service}: {url} did not answer ({exc})") from exc
    if response.status_code != 200:
        raise click.ClickException(f"{service}: {url} answered {response.status_code}")
    return f"{service}: {url} answered 200"


def check_worker(service: str) -> str:
    conn = connect()
    host = socket.gethostname()
    now = datetime.now(UTC)
    listened = queues.queues(conn, WORKER_QUEUES[service])
    names = [queue.name for queue in listened]
    for queue in listened:
        for worker in Worker.all(connection=conn, queue=queue):
            beat = worker.last_heartbeat
            if worker.hostname != host or beat is None:
                continue
            age = (now - beat.replace(tzinfo=beat.tzinfo or UTC)).total_seconds()
            if age <= worker.worker_ttl:
                return f"{service}: worker {worker.name} heartbeat {age:.0f}s ago"
    raise click.ClickException(
        f"{service}: no worker on {', '.join(names)} on host {host} has a live heartbeat"
    )


def check_inbox() -> str:
    key = heartbeat_key("inbox", get_bus_settings().host_name)
    value = connect().get(key)
    if value is None:
        raise click.ClickException(f"inbox: no heartbeat at {key} (not running, or stuck)")
    return f"inbox: last pass {value.decode() if isinstance(value, bytes) else value}"


@click.command("health")
@click.argument("service", type=click.Choice(SERVICES))
def health_command(service: str) -> None:
    """Exit 0 when SERVICE on this host is alive, 1 (with the reason) when it is not."""
    try:
        if service in HTTP_SERVICES:
            message = check_http(service)
        elif service in WORKER_QUEUES:
            message = check_worker(service)
        else:
            message = check_inbox()
    except RedisUnavailable as exc:
        raise click.ClickException(f"{service}: {exc}") from exc
    click.echo(message)
