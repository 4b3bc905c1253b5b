"""GPU readings for each training step (temperature, VRAM, power) from NVML; None without one."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    """One reading; every field None when there is no GPU or NVML cannot say."""

    gpu_temp_c: float | None = None
    gpu_vram_used_bytes: int | None = None
    gpu_vram_total_bytes: int | None = None
    gpu_power_watts: float | None = None

    def as_fields(self) -> dict[str, Any]:
        return {
            "gpu_temp_c": self.gpu_temp_c,
            "gpu_vram_used_bytes": self.gpu_vram_used_bytes,
            "gpu_vram_total_bytes": self.gpu_vram_total_bytes,
            "gpu_power_watts": self.gpu_power_watts,
        }


class GpuMeter:
    """Reads one GPU through NVML. Never raises: monitoring must not stop training, so a
    missing library, driver or GPU turns into empty readings (logged once)."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._handle: Any = None
        self._nvml: Any = None
        self.reason: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as exc:  # no library, no driver, no such GPU: all mean "no GPU"
            self.reason = f"NVML unavailable ({type(exc).__name__}: {exc})"
            log.info("GPU readings off: %s", self.reason)

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read(self) -> GpuSample:
        if self._handle is None:
            return GpuSample()
        nvml, handle = self._nvml, self._handle
        temp = vram_used = vram_total = power = None
        # Each reading on its own: some boards report temperature but not power.
        with contextlib.suppress(Exception):
            temp = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        with contextlib.suppress(Exception):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            vram_used, vram_total = int(memory.used), int(memory.total)
        with contextlib.suppress(Exception):
            power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # NVML reports milliwatts
        return GpuSample(temp, vram_used, vram_total, power)
