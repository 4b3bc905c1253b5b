"""Job functions for the fault tests, importable by dotted path as RQ needs."""

from __future__ import annotations

from rq import get_current_job

from bus.keys import heartbeat_key
from bus.settings import get_bus_settings


def trainer_heartbeat() -> str | None:
    """The trainer heartbeat key's value as seen from inside a running job."""
    job = get_current_job()
    assert job is not None
    value = job.connection.get(heartbeat_key("trainer", get_bus_settings().host_name))
    return value.decode() if isinstance(value, bytes) else value
