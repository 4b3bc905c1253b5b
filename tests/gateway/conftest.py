"""Fixtures: a running gateway against the test Redis, with temporary data directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.gateway.rig import Gateway, gateway_env


@pytest.fixture
def start_gateway(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start a gateway with extra R3_* settings; every one started is stopped at teardown."""
    started: list[Gateway] = []

    def start(**extra: str) -> Gateway:
        env = gateway_env(redis_url, tmp_path, extra)
        gw = Gateway(env, int(env["R3_GATEWAY_PORT"]), tmp_path / f"gateway-{len(started)}.log")
        started.append(gw)
        gw.start()
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()
