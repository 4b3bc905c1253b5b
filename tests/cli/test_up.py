"""`regime3 up` as a user runs it: a real process, real signals, a private redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from tests.rig.ports import free_port


def start_up(tmp_path: Path, port: int, *, path_env: str | None = None) -> subprocess.Popen:
    env = dict(
        os.environ,
        R3_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        R3_DATA_DIR=str(tmp_path / "data"),
        PYTHONUNBUFFERED="1",
    )
    if path_env is not None:
        env["PATH"] = path_env
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_starts_a_private_redis_and_stops_everything_on_a_signal(tmp_path: Path, sig):
    port = free_port()
    up = start_up(tmp_path, port)
    try:
        wait_for(lambda: answers(port))
        children = psutil.Process(up.pid).children(recursive=True)
        assert any("redis-server" in c.name() for c in children)
        redis.Redis(port=port).set("r3:test:kept", "1")  # AOF on: it must survive a restart
        time.sleep(1.2)  # appendfsync everysec
        up.send_signal(sig)
        out, _ = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, out
    assert "started a private redis-server" in out
    assert "skipped" in out or "started (pid" in out
    assert "all stopped" in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not answers(port)
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()


@pytest.mark.slow
def test_children_die_even_when_up_is_killed_hard(tmp_path: Path) -> None:
    port = free_port()
    up = start_up(tmp_path, port)
    wait_for(lambda: answers(port))
    children = psutil.Process(up.pid).children(recursive=True)
    up.kill()  # SIGKILL: no handler runs; PR_SET_PDEATHSIG must do the work
    up.wait()
    wait_for(
        lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE],
        timeout=10,
    )
    assert not answers(port)


def test_up_without_redis_and_without_redis_server_says_how_to_get_it(tmp_path: Path):
    port = free_port()
    up = start_up(tmp_path, port, path_env=str(tmp_path))  # nothing on PATH
    out, _ = up.communicate(timeout=30)
    assert up.returncode != 0
    assert f"No Redis answers at redis://127.0.0.1:{port}/0" in out
    assert "apt-get install redis-server" in out and "R3_REDIS_URL" in out


def test_up_uses_a_redis_that_already_answers(tmp_path: Path, test_redis) -> None:
    env = dict(os.environ, R3_REDIS_URL=test_redis.url, R3_DATA_DIR=str(tmp_path / "data"))
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--host", "node", "--only", "node"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = ""
        deadline = time.monotonic() + 20
        while "ready" not in out and "nothing to run" not in out:
            assert time.monotonic() < deadline, out
            out += up.stdout.readline()
        if "ready" in out:  # the node service exists: stop it as a user would
            up.send_signal(signal.SIGINT)
        out += up.communicate(timeout=30)[0]
    finally:
        if up.poll() is None:
            up.kill()
    assert f"using the Redis at {test_redis.url}" in out
    assert "private" not in out
    assert up.returncode == 0
