"""Settings every process shares: where Redis is, where data lives, how the bus behaves."""

from __future__ import annotations

import socket
from functools import lru_cache

from pydantic import Field

from settings.base import R3Settings


class BusSettings(R3Settings):
    """Read from `R3_*` environment variables (and an optional `.env` file)."""

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis the services talk through (streams, RQ queues, status hashes).",
    )
    host_name: str = Field(
        default_factory=socket.gethostname,
        json_schema_extra={"shown_default": "this machine's hostname"},
        description="Name this host gives itself in events (`host` field) and in telemetry.",
    )
    run_id: str = Field(
        "default",
        description="Run id stamped on every event, to tell runs apart in one Redis.",
    )
    stream_maxlen_training: int = Field(
        200_000,
        description="Approximate MAXLEN of the training-metrics stream (one entry per step).",
    )
    stream_maxlen_default: int = Field(
        20_000,
        description="Approximate MAXLEN of every other event stream.",
    )
    stream_maxlen_overrides: dict[str, int] = Field(
        default_factory=dict,
        description="Per-stream caps by short name, as JSON: "
        '`{"telemetry": 5000, "alerts": 1000}`.',
    )
    reclaim_idle_seconds: float = Field(
        60.0,
        gt=0,
        description="A work entry pending this long on a silent consumer is reclaimed "
        "(XAUTOCLAIM) by another.",
    )
    max_deliveries: int = Field(
        5,
        description="A work entry that failed this many deliveries goes to the dead-letter stream.",
    )


@lru_cache
def get_bus_settings() -> BusSettings:
    """Built lazily and cached, so importing a module never reads the environment."""
    return BusSettings()
