"""GPU readings from NVML and system readings from psutil, published as `telemetry` events.

Nothing here may stop the node: without the NVML library, its driver or a GPU, readings
say `gpus: null` with the reason, and a single reading a board does not support is None.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil
import redis

from bus import keys
from bus.events import GpuReading, Telemetry
from bus.publish import Publisher

log = logging.getLogger(__name__)

Role = Literal["trainer", "node", "gateway", "other"]


def nvml_error_name(exc: BaseException) -> str:
    """`NVML_ERROR_NO_PERMISSION`-style name of a pynvml error, else the exception's type."""
    value = getattr(exc, "value", None)
    if value is not None:
        try:
            import pynvml

            for name in dir(pynvml):
                if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == value:
                    return name
        except ImportError:
            pass
    return type(exc).__name__


class GpuProbe:
    """NVML, opened once; `nvml` is the pynvml module (or an object with its functions).

    When NVML cannot be used, `reason` says why and what would fix it, and `read()` is None.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self.nvml: Any = None
        self.reason: str | None = None
        self.driver: str | None = None
        self._handles: list[Any] = []
        self._lock = threading.Lock()  # NVML handles are shared by the HTTP and publish paths
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
        except ImportError:
            self.reason = "the nvidia-ml-py package is not installed (pip install nvidia-ml-py)"
            return
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            self.reason = (
                f"NVML could not start ({nvml_error_name(exc)}: {exc}): no NVIDIA driver on "
                "this host, or the container was started without GPU access "
                "(docker run --gpus all)"
            )
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self.reason = f"NVML started but listing GPUs failed ({nvml_error_name(exc)}: {exc})"
            return
        if not self._handles:
            self.reason = "NVML found no GPU on this host"
            return
        with contextlib.suppress(Exception):
            driver = nvml.nvmlSystemGetDriverVersion()
            self.driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        self.nvml = nvml

    @property
    def available(self) -> bool:
        return self.nvml is not None

    @property
    def count(self) -> int:
        return len(self._handles) if self.available else 0

    def handle(self, index: int) -> Any:
        if not self.available:
            raise LookupError(f"no GPU: {self.reason}")
        if not 0 <= index < len(self._handles):
            raise LookupError(f"no GPU {index}: this host has {len(self._handles)} (0-based)")
        return self._handles[index]

    def call(self, name: str, *args: Any) -> Any:
        """One NVML function under the lock; raises what NVML raises."""
        with self._lock:
            return getattr(self.nvml, name)(*args)

    def _maybe(self, name: str, *args: Any) -> Any:
        # Each reading on its own: consumer boards report temperature but not always power.
        try:
            return self.call(name, *args)
        except Exception:
            return None

    def read(self) -> list[GpuReading] | None:
        if not self.available:
            return None
        nvml = self.nvml
        readings = []
        for index, handle in enumerate(self._handles):
            name = self._maybe("nvmlDeviceGetName", handle)
            memory = self._maybe("nvmlDeviceGetMemoryInfo", handle)
            power = self._maybe("nvmlDeviceGetPowerUsage", handle)
            limit = self._maybe("nvmlDeviceGetPowerManagementLimit", handle)
            usage = self._maybe("nvmlDeviceGetUtilizationRates", handle)
            temp = self._maybe("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
            sm = self._maybe("nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM)
            mem = self._maybe("nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_MEM)
            readings.append(
                GpuReading(
                    index=index,
                    name=(name.decode() if isinstance(name, bytes) else str(name or "unknown")),
                    temp_c=None if temp is None else float(temp),
                    vram_used_bytes=None if memory is None else int(memory.used),
                    vram_total_bytes=None if memory is None else int(memory.total),
                    # NVML reports milliwatts
                    power_watts=None if power is None else power / 1000.0,
                    power_limit_watts=None if limit is None else limit / 1000.0,
                    utilization_percent=None if usage is None else float(usage.gpu),
                    sm_clock_mhz=None if sm is None else int(sm),
                    mem_clock_mhz=None if mem is None else int(mem),
                )
            )
        return readings


@dataclass(frozen=True)
class SystemReading:
    cpu_percent: float  # since the previous reading (the first one: since the probe started)
    cpu_count: int
    load_average: tuple[float, float, float]
    ram_used_bytes: int
    ram_total_bytes: int
    disk_path: str
    disk_free_bytes: int
    disk_total_bytes: int
    uptime_seconds: float


class SystemProbe:
    """psutil readings; `disk_path` is the filesystem that matters (where models are kept)."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = Path(disk_path)
        psutil.cpu_percent(interval=None)  # primes the counter, so the first reading is real

    def _disk_target(self) -> Path:
        # The data directory may not exist yet on a fresh host; its nearest parent does.
        path = self.disk_path.resolve()
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    def read(self) -> SystemReading:
        memory = psutil.virtual_memory()
        target = self._disk_target()
        disk = psutil.disk_usage(str(target))
        return SystemReading(
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            cpu_count=psutil.cpu_count() or 1,
            load_average=tuple(os.getloadavg()),  # type: ignore[arg-type]
            ram_used_bytes=int(memory.total - memory.available),
            ram_total_bytes=int(memory.total),
            disk_path=str(target),
            disk_free_bytes=int(disk.free),
            disk_total_bytes=int(disk.total),
            uptime_seconds=time.time() - psutil.boot_time(),
        )


def snapshot(
    gpu: GpuProbe,
    system: SystemProbe,
    *,
    role: Role = "node",
    power_profile: str | None = None,
) -> Telemetry:
    """One `telemetry` event from both probes."""
    reading = system.read()
    gpus = gpu.read()
    return Telemetry(
        role=role,
        gpus=gpus,
        gpu_reason=None if gpus is not None else gpu.reason,
        power_profile=power_profile,
        cpu_percent=reading.cpu_percent,
        ram_used_bytes=reading.ram_used_bytes,
        ram_total_bytes=reading.ram_total_bytes,
        disk_free_bytes=reading.disk_free_bytes,
        disk_total_bytes=reading.disk_total_bytes,
    )


class TelemetryLoop:
    """Publishes a snapshot every `interval_s` until stopped; a failed reading is logged."""

    def __init__(
        self,
        publisher: Publisher,
        gpu: GpuProbe,
        system: SystemProbe,
        *,
        node: str,
        interval_s: float = 5.0,
        power_profile: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.publisher = publisher
        self.gpu = gpu
        self.system = system
        self.node = node
        self.interval_s = interval_s
        self.power_profile = power_profile

    def publish_once(self) -> Telemetry:
        event = snapshot(self.gpu, self.system, power_profile=self.power_profile())
        self.publisher.publish(event)
        r: redis.Redis = self.publisher.redis
        status = {"telemetry_time": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        if event.power_profile:
            status["power_profile"] = event.power_profile
        r.hset(keys.node_status_key(self.node), mapping=status)  # type: ignore[arg-type]
        r.sadd(keys.NODES, self.node)
        return event

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.publish_once()
            except Exception:  # a Redis blip or a psutil oddity must not end the loop
                log.exception("telemetry reading failed; next try in %.0f s", self.interval_s)
            stop.wait(self.interval_s)
