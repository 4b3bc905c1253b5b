"""Connecting to Redis, with an error that says where we looked and what to do."""

from __future__ import annotations

import redis

from bus.errors import RedisUnavailable
from bus.settings import get_bus_settings


def connect(url: str | None = None, *, check: bool = True) -> redis.Redis:
    """A client for `url` (default: R3_REDIS_URL); with `check`, fails fast if none answers."""
    url = url or get_bus_settings().redis_url
    client = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=30)
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"no Redis answers at {url} ({exc}). Start one (`redis-server`), point "
                "R3_REDIS_URL at yours, or run `regime3 up`, which starts a private one."
            ) from None
    return client
