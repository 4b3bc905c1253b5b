"""Test rig: a real Redis for every test, in a database (or a private server) this run owns."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from tests.rig.ports import free_port
from tests.rig.threads import torch_threads

CLAIM_KEY = "r3:test:claim"


@dataclass(frozen=True)
class TestRedis:
    host: str
    port: int
    db: int
    token: str  # the claim key's value: this run's host:pid

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, db=self.db)


def _answers(host: str, port: int) -> bool:
    try:
        return bool(redis.Redis(host=host, port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _dead_claim(value: bytes | None) -> bool:
    """A claim left by a test run on this host whose process is gone (killed mid-run)."""
    if value is None:
        return False
    host, _, pid = value.decode(errors="replace").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def _claim_empty_db(host: str, port: int, token: str) -> int | None:
    """Take a database nobody uses, so tests never touch keys they did not create.

    SET NX on the claim key settles the race between two test runs that both saw it empty.
    A database claimed by a test run that was killed before its teardown is taken over (SET
    XX GET returns the dead claim to exactly one taker) and emptied: its keys are a dead test
    run's, never anyone else's.
    """
    for db in range(15, 0, -1):
        r = redis.Redis(host=host, port=port, db=db)
        if r.dbsize() == 0 and r.set(CLAIM_KEY, token, nx=True):
            return db
        stale = r.get(CLAIM_KEY)
        if _dead_claim(stale) and r.set(CLAIM_KEY, token, xx=True, get=True) == stale:
            r.flushdb()
            r.set(CLAIM_KEY, token)
            return db
    return None


def _start_private_redis(tmp: Path, tried: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit(
            f"No Redis with a free database answers at {tried} and no redis-server is on "
            "PATH: install it (apt-get install redis-server), or point R3_TEST_REDIS_HOST and "
            "R3_TEST_REDIS_PORT at a Redis the tests may use.",
            returncode=3,
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _answers("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.exit("a private redis-server did not start within 10 s", returncode=3)
        time.sleep(0.05)
    return proc, port


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test may reach a model hub: any attempt fails fast instead of downloading."""
    from services.model.config import get_model_settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("R3_MODEL", raising=False)
    get_model_settings.cache_clear()
    yield
    get_model_settings.cache_clear()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (tests/rig/threads.py says why)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny model, built once a session (shared by every test package)."""
    from tests.model.fixtures import embedded_model_dir

    return embedded_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def test_redis() -> Iterator[TestRedis]:
    """R3_TEST_REDIS_HOST / R3_TEST_REDIS_PORT (default 127.0.0.1:6379) when a database there is
    free to claim, else a private redis-server on a free port."""
    host = os.environ.get("R3_TEST_REDIS_HOST", "127.0.0.1")
    port = int(os.environ.get("R3_TEST_REDIS_PORT", "6379"))
    token = f"{socket.gethostname()}:{os.getpid()}"
    proc = None
    tmp = None
    db = _claim_empty_db(host, port, token) if _answers(host, port) else None
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="r3-test-redis-")
        proc, port = _start_private_redis(Path(tmp.name), f"{host}:{port}")
        host, db = "127.0.0.1", 0
    where = TestRedis(host, port, db, token)
    try:
        yield where
    finally:
        where.client().flushdb()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        if tmp is not None:
            tmp.cleanup()


@pytest.fixture
def redis_url(test_redis: TestRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean database for this test; R3_REDIS_URL points at it for code under test."""
    client = test_redis.client()
    client.flushdb()
    client.set(CLAIM_KEY, test_redis.token)
    monkeypatch.setenv("R3_REDIS_URL", test_redis.url)
    from bus.settings import get_bus_settings

    get_bus_settings.cache_clear()
    yield test_redis.url
    get_bus_settings.cache_clear()
    client.flushdb()
    client.set(CLAIM_KEY, test_redis.token)


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)
