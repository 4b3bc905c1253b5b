"""Runs regime3's processes on one machine without Docker: a private Redis when none
answers, each service as a child, restarts with backoff, and a clean stop on Ctrl-C.

No orphans: children run in their own session (so a terminal's Ctrl-C reaches only us and we
stop them in order: services first, Redis last) and carry PR_SET_PDEATHSIG, so the kernel
sends them SIGTERM even if this process is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import urlparse

import redis

from settings.layout import DataLayout

Host = Literal["trainer", "node"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # run as `python -m <module>`
    host: Host


# The processes of docs/design.md's table, in start order (stopped in reverse).
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("gateway", "services.gateway", "trainer"),
    ServiceSpec("trainer", "services.trainer", "trainer"),
    ServiceSpec("inbox", "services.inbox", "trainer"),
    ServiceSpec("feeder", "services.feeder", "trainer"),
    ServiceSpec("node", "services.node", "node"),
    ServiceSpec("node-worker", "services.node.worker", "node"),
)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; 1 = PR_SET_PDEATHSIG.
    _libc.prctl(1, signal.SIGTERM)


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_preexec: Callable[[], None] | None = _die_with_parent if _libc is not None else None


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    restart: bool = True
    proc: subprocess.Popen[str] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    pump: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, *, out: TextIO = sys.stdout, grace_seconds: float = 10.0) -> None:
        self.out = out
        self.grace = grace_seconds
        self.children: list[Child] = []
        self.redis_child: Child | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    # --- Redis -----------------------------------------------------------------------------

    def ensure_redis(self, url: str, data_dir: Path) -> None:
        """Use the Redis at `url`, or start a private one there; raise SystemExit if neither."""
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if _answers(url):
            self.say(f"redis       | using the Redis at {url}")
            return
        binary = shutil.which("redis-server")
        if host not in LOCAL_HOSTS or binary is None:
            why = (
                "it is not on this machine"
                if host not in LOCAL_HOSTS
                else ("no redis-server is on PATH")
            )
            raise SystemExit(
                f"No Redis answers at {url} and a private one cannot be started ({why}).\n"
                "Install Redis (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: "
                "`brew install redis`), start it, or set R3_REDIS_URL to a Redis that answers."
            )
        redis_dir = DataLayout(data_dir.resolve()).redis
        redis_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--loglevel",
            "warning",
        ]
        self.redis_child = Child("redis", argv, dict(os.environ), restart=True)
        self._start(self.redis_child)
        deadline = time.monotonic() + 15
        while not _answers(url):
            proc = self.redis_child.proc
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                self.stop()
                raise SystemExit(
                    f"a private redis-server on port {port} did not start; its output is above"
                )
            time.sleep(0.05)
        self.say(
            f"redis       | no Redis answered at {url}: started a private redis-server "
            f"(pid {self.redis_child.proc.pid if self.redis_child.proc else '?'}), "
            f"data in {redis_dir}"
        )

    # --- services --------------------------------------------------------------------------

    def add_services(self, specs: Sequence[ServiceSpec], env: dict[str, str]) -> None:
        for spec in specs:
            child = Child(spec.name, [sys.executable, "-m", spec.module], env)
            self.children.append(child)
            self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.argv,
            env=child.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_preexec,
        )
        child.started_at = time.monotonic()
        child.pump = threading.Thread(target=self._pump, args=(child, child.proc), daemon=True)
        child.pump.start()
        if child.name != "redis":
            self.say(f"{child.name:<11} | started (pid {child.proc.pid})")

    def _pump(self, child: Child, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.say(f"{child.name:<11} | {line.rstrip()}")

    def _check(self, child: Child) -> None:
        proc = child.proc
        if proc is None:
            if time.monotonic() >= child.next_start:
                self._start(child)
            return
        code = proc.poll()
        if code is None:
            return
        child.proc = None
        if child.pump is not None:
            child.pump.join(timeout=1)
        # Back off 1, 2, 4 … 30 s; a service that ran a minute or more starts from 1 s again.
        if time.monotonic() - child.started_at > 60:
            child.restarts = 0
        delay = min(30.0, 2.0**child.restarts)
        child.restarts += 1
        child.next_start = time.monotonic() + delay
        self.say(f"{child.name:<11} | exited with code {code}; restarting in {delay:.0f} s")

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM, then stop everything; returns the exit code."""
        if not self.children and self.redis_child is None:
            self.say("nothing to run: no service exists in this version yet")
            return 0
        # The handlers first, then "ready": a Ctrl-C the moment it is printed must stop
        # everything cleanly, not raise KeyboardInterrupt past the supervisor.
        previous = {
            s: signal.signal(s, lambda *_: self._stop.set())
            for s in (signal.SIGINT, signal.SIGTERM)
        }
        self.say("ready: Ctrl-C stops everything")
        try:
            while not self._stop.wait(0.2):
                for child in [*self.children, *([self.redis_child] if self.redis_child else [])]:
                    self._check(child)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM services (last started first), then Redis; SIGKILL what outlives grace."""
        groups = [list(reversed(self.children))]
        if self.redis_child is not None:
            groups.append([self.redis_child])
        for group in groups:
            running = [c for c in group if c.proc is not None and c.proc.poll() is None]
            for c in running:
                self.say(f"{c.name:<11} | stopping")
                assert c.proc is not None
                c.proc.terminate()
            deadline = time.monotonic() + self.grace
            for c in running:
                assert c.proc is not None
                try:
                    c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{c.name:<11} | did not stop in {self.grace:.0f} s; killing")
                    c.proc.kill()
                    c.proc.wait()
                if c.pump is not None:
                    c.pump.join(timeout=1)
            for c in group:
                c.proc = None
        self.say("all stopped")


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, ValueError):
        return False
