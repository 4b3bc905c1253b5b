"""The node's hardware side, built once a process: GPU and system probes, the power controller,
and the background task that publishes telemetry and applies the power schedule."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from services.node.config import NodeSettings
from services.node.hardware.power import PowerController, PowerError, parse_schedule
from services.node.hardware.telemetry import GpuProbe, SystemProbe, TelemetryLoop
from services.node.state import NodeState

log = logging.getLogger(__name__)

_build_lock = threading.Lock()


@dataclass(frozen=True)
class Ops:
    gpu: GpuProbe
    system: SystemProbe
    power: PowerController
    schedule_error: str | None = None  # R3_POWER_SCHEDULE unreadable: no schedule runs


def build_ops(settings: NodeSettings) -> Ops:
    """Open NVML once (or learn why not) and configure power from the settings.

    An unreadable R3_POWER_SCHEDULE must not take telemetry down with it: the node runs
    without a schedule, logs the error, and GET /power shows it.
    """
    gpu = GpuProbe()
    try:
        schedule = parse_schedule(settings.power_schedule)
        schedule_error = None
    except PowerError as exc:
        schedule, schedule_error = [], f"R3_POWER_SCHEDULE ignored: {exc.reason}"
        log.error("%s", schedule_error)
    power = PowerController(
        gpu,
        profiles={
            "quiet": settings.power_quiet_watts,
            "normal": settings.power_normal_watts,
            "max": settings.power_max_watts,
        },
        schedule=schedule,
        default_profile=settings.power_default_profile,
        sudo_nvidia_smi=settings.power_sudo_nvidia_smi,
    )
    return Ops(
        gpu=gpu,
        system=SystemProbe(settings.models_dir),
        power=power,
        schedule_error=schedule_error,
    )


def get_ops(state: NodeState) -> Ops:
    """The process's Ops, built on first use (a route or the background task, whichever first)."""
    with _build_lock:
        if state.ops is None:
            state.ops = build_ops(state.settings)
        return state.ops


async def run(state: NodeState) -> None:
    """Background task: telemetry every R3_TELEMETRY_INTERVAL_SECONDS and the power schedule."""
    ops = await asyncio.to_thread(get_ops, state)
    telemetry = TelemetryLoop(
        state.publisher,
        ops.gpu,
        ops.system,
        node=state.node_name,
        interval_s=state.settings.telemetry_interval_seconds,
        power_profile=lambda: ops.power.profile,
    )
    if ops.gpu.reason:
        log.info("GPU telemetry off: %s", ops.gpu.reason)
    stop = threading.Event()
    try:
        await asyncio.gather(
            asyncio.to_thread(ops.power.run, stop),
            asyncio.to_thread(telemetry.run, stop),
        )
    finally:
        stop.set()
