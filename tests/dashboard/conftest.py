"""Dashboard test rig: the real gateway in a subprocess and Debian's headless Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

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


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(os.environ.get("R3_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path, artifacts_dir: Path) -> Iterator[Gateway]:
    gw = Gateway(redis_url, tmp_path / "data", artifacts_dir / "gateway.log")
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (never `playwright install`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
