"""The users' old viewer endpoints: GET /status/training_status.json and GET /api/memory_stats."""

from __future__ import annotations

from typing import Any

import psutil
from fastapi import APIRouter, Request

from bus import liveness
from bus.status import StatusStore
from services.gateway.telemetry import latest_by_host

router = APIRouter()


@router.get("/status/training_status.json")
def training_status(request: Request) -> dict[str, Any]:
    """The old setup's status payload exactly as bus.status.TrainingStatus holds it (field
    names and meanings of the users' old core/training_status.py, plus the live figures;
    docs/compat.md). A `training` whose trainer stopped beating is answered as `crashed`
    (bus.liveness)."""
    redis = request.app.state.redis
    return liveness.shown(StatusStore(redis).read(), redis).model_dump(mode="json")


@router.get("/api/memory_stats")
def memory_stats(request: Request) -> dict[str, Any]:
    """RAM, disk and GPU memory of every host from its latest telemetry, and the gateway's own
    resident memory; a host's `time` says how fresh its figures are."""
    hosts = []
    for host, t in sorted(latest_by_host(request.app.state.redis).items()):
        hosts.append(
            {
                "host": host,
                "role": t.role,
                "time": t.time.isoformat().replace("+00:00", "Z"),
                "ram_used_bytes": t.ram_used_bytes,
                "ram_total_bytes": t.ram_total_bytes,
                "disk_free_bytes": t.disk_free_bytes,
                "disk_total_bytes": t.disk_total_bytes,
                "cpu_percent": t.cpu_percent,
                "gpu_reason": t.gpu_reason,
                "gpus": [
                    {
                        "index": g.index,
                        "name": g.name,
                        "vram_used_bytes": g.vram_used_bytes,
                        "vram_total_bytes": g.vram_total_bytes,
                        "temp_c": g.temp_c,
                        "power_watts": g.power_watts,
                    }
                    for g in t.gpus or []
                ],
            }
        )
    return {"hosts": hosts, "gateway_rss_bytes": psutil.Process().memory_info().rss}
