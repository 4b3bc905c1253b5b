"""The test rig itself: what it says when it finds no Redis is what works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.rig.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def test_no_redis_and_no_redis_server_names_the_variables_that_work(tmp_path: Path) -> None:
    # Nothing listens on the port and PATH holds no redis-server: the run must stop and say
    # which variables point the tests at another Redis.
    env = {
        **os.environ,
        "R3_TEST_REDIS_HOST": "127.0.0.1",
        "R3_TEST_REDIS_PORT": str(free_port()),
        "PATH": str(tmp_path),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/bus/test_status.py::test_status_round_trips_and_reads_plainly",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert "R3_TEST_REDIS_HOST" in out and "R3_TEST_REDIS_PORT" in out, out
    assert "R3_TEST_REDIS_URL" not in out  # a variable the rig never read
