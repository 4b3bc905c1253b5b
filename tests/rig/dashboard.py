"""The dashboard under test: the real gateway in a subprocess, a page in Debian's headless
Chromium, and training steps to publish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bus import events as ev
from tests.rig.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


class Gateway:
    """`python -m services.gateway` on a fixed port, so a restart comes back at the same URL."""

    def __init__(self, redis_url: str, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "R3_REDIS_URL": redis_url,
            "R3_GATEWAY_HOST": "127.0.0.1",
            "R3_GATEWAY_PORT": str(self.port),
            "R3_DATA_DIR": str(data_dir),
            "R3_DASHBOARD_DIR": str(REPO / "dashboards"),
        }
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.gateway"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with {self.proc.returncode} while starting; "
                    f"its log: {self.log_path}\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not answer /healthz in {timeout} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown, so no stream is closed politely."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


TRAINER = "trainer-a"
NODE = "node-a"


def step(n: int, **fields: Any) -> ev.TrainStep:
    defaults: dict[str, Any] = {
        "host": TRAINER,
        "run_id": "run-test",
        "current_step": n,
        "total_steps": 5000,
        "loss": 2.0 / (1 + n / 100),
        "learning_rate": 2e-4,
        "streaming_ce": 1.9 / (1 + n / 100),
        "tokens_per_sec": 9000.0 + n,
        "eta_seconds": (5000 - n) * 1.2,
        "current_file": "syllo_batch_001.jsonl",
        "batch_step": n % 118,
        "batch_total_steps": 118,
        "batch_number": 6,
        "batch_queue_size": 3,
        "gpu_temp_c": 71.0,
        "gpu_vram_used_bytes": 19 << 30,
        "gpu_vram_total_bytes": 24 << 30,
        "gpu_power_watts": 320.0,
    }
    return ev.TrainStep(**(defaults | fields))


def open_page(chromium: Any, url: str, width: int, height: int) -> Iterator[Any]:
    """A page of the dashboard at `url`, live; fails the test if the page logged an error."""
    context = chromium.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(url + "/")
    pg.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    pg.r3_errors = errors  # a test that kills the gateway expects connection errors
    yield pg
    context.close()
    # A script error would leave panels stale without failing any wait above.
    assert not errors, f"the page logged errors: {errors}"
