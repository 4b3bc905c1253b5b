"""A small honest stand-in for pynvml: the few calls telemetry and power make, on fake boards.

Only for what cannot exist on a GPU-less test host. It keeps NVML's units (milliwatts, bytes,
MHz), its errors (pynvml's own NVMLError subclasses, e.g. NO_PERMISSION when not root) and its
rule that a set limit outside the card's constraints is refused with INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml


@dataclass
class FakeBoard:
    name: str = "NVIDIA GeForce RTX 3090"
    temp_c: int = 61
    vram_total: int = 24 << 30
    vram_used: int = 3 << 30
    power_mw: int = 187_000
    limit_mw: int = 350_000
    default_mw: int = 350_000
    min_mw: int = 100_000
    max_mw: int = 350_000
    gpu_util: int = 40
    sm_mhz: int = 1695
    mem_mhz: int = 9751
    supports_power_reading: bool = True
    supports_limit: bool = True


@dataclass
class FakeNvml:
    boards: list[FakeBoard] = field(default_factory=lambda: [FakeBoard()])
    root: bool = False  # NVML lets only root change a power limit
    set_calls: list[tuple[int, int]] = field(default_factory=list)

    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.14"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.boards):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.boards[h].name

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self.boards[h].temp_c

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        b = self.boards[h]
        return SimpleNamespace(
            total=b.vram_total, used=b.vram_used, free=b.vram_total - b.vram_used
        )

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if not self.boards[h].supports_power_reading:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.boards[h].power_mw

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return self.boards[h].limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return self.boards[h].default_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> tuple[int, int]:
        return self.boards[h].min_mw, self.boards[h].max_mw

    def nvmlDeviceSetPowerManagementLimit(self, h: int, limit_mw: int) -> None:
        b = self.boards[h]
        if not b.supports_limit:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not self.root:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        if not b.min_mw <= limit_mw <= b.max_mw:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.set_calls.append((h, limit_mw))
        b.limit_mw = limit_mw

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.boards[h].gpu_util, memory=12)

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        b = self.boards[h]
        return b.sm_mhz if clock == pynvml.NVML_CLOCK_SM else b.mem_mhz
