"""Connecting to Redis, with an error that says where we looked and what to do."""

from __future__ import annotations

import logging
import math
import time

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from bus.errors import RedisUnavailable
from bus.settings import get_bus_settings

log = logging.getLogger(__name__)

# How long a worker (trainer, node worker, feeder) keeps retrying a command while Redis is
# away: a restart, an AOF rewrite stall, a container being recreated. Past it the command
# raises as before. The gateway and the CLI do not ride out: they answer at once (503, an
# error message) and are asked again.
RIDE_OUT_SECONDS = 120.0
BACKOFF_CAP = 2.0  # seconds between tries once the backoff has grown
BACKOFF_BASE = 0.1


def ride_out_retry(seconds: float) -> Retry:
    """Retries with exponential backoff (jittered, capped) that last about `seconds`."""
    # 0.1, 0.2, 0.4, 0.8, 1.6 s, then every BACKOFF_CAP: about 3 s for the first five.
    retries = 5 + max(0, math.ceil((seconds - 3.1) / BACKOFF_CAP))
    return Retry(ExponentialWithJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), retries)


def connect(
    url: str | None = None, *, check: bool = True, ride_out: float | None = None
) -> redis.Redis:
    """A client for `url` (default: R3_REDIS_URL); with `check`, fails fast if none answers.

    `ride_out` (seconds): every command retries with backoff for about that long when the
    connection fails, so a Redis restart pauses the caller instead of failing its work.
    None keeps redis-py's few quick retries.
    """
    url = url or get_bus_settings().redis_url
    if check:
        probe = redis.Redis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            probe.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"no Redis answers at {url} ({exc}). Start one (`redis-server`), point "
                "R3_REDIS_URL at yours, or run `regime3 up`, which starts a private one."
            ) from None
        finally:
            probe.close()
    options: dict[str, object] = {"socket_connect_timeout": 2, "health_check_interval": 30}
    if ride_out:
        options["retry"] = ride_out_retry(ride_out)
    return redis.Redis.from_url(url, **options)


def connect_waiting(seconds: float = RIDE_OUT_SECONDS) -> redis.Redis:
    """A worker's client: it rides out Redis restarts, and at start-up it waits up to
    `seconds` for Redis (started together, or restarting) instead of exiting at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return connect(ride_out=seconds)
        except RedisUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s Waiting for it.", exc)
            time.sleep(2)
