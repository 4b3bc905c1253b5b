"""Dashboard fixtures: the real gateway in a subprocess and Debian's headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.dashboard import CHROMIUM, REPO, Gateway


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
