"""`regime3 health`: what the compose healthchecks run, against real Redis, RQ and HTTP."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bus import queues
from bus.worker import EventWorker
from services.cli.main import cli
from services.inbox.config import InboxSettings
from services.inbox.watcher import Inbox
from tests.rig.ports import free_port


def health(service: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["health", service])
    return result.exit_code, result.output


def test_worker_alive_while_registered_and_not_after_death(r: redis.Redis) -> None:
    assert health("trainer")[0] == 1
    worker = EventWorker(queues.queues(r, "train"), connection=r, name="trainer-health")
    worker.register_birth()
    worker.heartbeat()
    code, out = health("trainer")
    assert code == 0 and "trainer-health" in out
    # A node worker's health is about the node queues: the trainer's worker does not count.
    code, out = health("node-worker")
    assert code == 1 and "node-high" in out
    worker.register_death()
    assert health("trainer")[0] == 1


def test_inbox_alive_only_after_a_pass(r: redis.Redis, tmp_path: Path) -> None:
    code, out = health("inbox")
    assert code == 1 and "no heartbeat" in out
    settings = InboxSettings(data_dir=tmp_path, inbox_poll_seconds=0.05)
    stop = threading.Event()
    inbox = Inbox(r, settings)
    thread = threading.Thread(target=inbox.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if health("inbox")[0] == 0:
                break
            stop.wait(0.05)
        assert health("inbox")[0] == 0
    finally:
        stop.set()
        thread.join(5)


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_service_health_follows_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("R3_GATEWAY_PORT", str(port))
    code, out = health("gateway")
    assert code == 1 and "did not answer" in out
    server = ThreadingHTTPServer(("127.0.0.1", port), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, out = health("gateway")
        assert code == 0 and f":{port}/healthz answered 200" in out
    finally:
        server.shutdown()
