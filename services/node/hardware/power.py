"""Power profiles (quiet / normal / max): a GPU power limit set by hand or on a daily schedule.

A profile's watts are clamped to the range the card allows (NVML's limit constraints), so
`max = 350` on a card capped at 300 W sets 300 W and says so. Setting a limit needs root:
when NVML refuses, the answer says why and the two ways to allow it (run as root, or let
the node call `sudo -n nvidia-smi -pl`, which the users' hosts already permit).
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from datetime import time as clock
from typing import Any, Literal

from services.node.hardware.telemetry import GpuProbe, nvml_error_name

log = logging.getLogger(__name__)

PROFILES: tuple[str, ...] = ("quiet", "normal", "max")
By = Literal["manual", "schedule"]
Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


class PowerError(Exception):
    """A profile that could not be applied. `kind` picks the HTTP status at the API edge:
    `invalid` (bad request), `unavailable` (no GPU/NVML), `refused` (no permission)."""

    def __init__(self, kind: Literal["invalid", "unavailable", "refused"], reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


# --- schedule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleRule:
    profile: str
    start: clock
    end: clock  # exclusive; before `start` means the rule runs past midnight

    def covers(self, now: clock) -> bool:
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def __str__(self) -> str:
        return f"{self.profile}={self.start:%H:%M}-{self.end:%H:%M}"


def _clock(text: str, rule: str) -> clock:
    try:
        hours, minutes = text.strip().split(":")
        return clock(int(hours), int(minutes))
    except ValueError:
        raise PowerError(
            "invalid", f"power schedule rule {rule!r}: {text!r} is not a time like 22:00"
        ) from None


def parse_schedule(text: str) -> list[ScheduleRule]:
    """`quiet=22:00-07:00, max=09:00-12:00` → rules; the first rule covering a time wins."""
    rules = []
    for raw in filter(None, (part.strip() for part in text.split(","))):
        profile, sep, span = raw.partition("=")
        start, dash, end = span.partition("-")
        if not sep or not dash:
            raise PowerError(
                "invalid",
                f"power schedule rule {raw!r}: write it as profile=HH:MM-HH:MM, "
                "e.g. quiet=22:00-07:00",
            )
        profile = profile.strip()
        if profile not in PROFILES:
            raise PowerError(
                "invalid",
                f"power schedule rule {raw!r}: unknown profile {profile!r} "
                f"(one of {', '.join(PROFILES)})",
            )
        rules.append(ScheduleRule(profile, _clock(start, raw), _clock(end, raw)))
    return rules


def scheduled_profile(rules: Sequence[ScheduleRule], now: clock, default: str) -> str:
    for rule in rules:
        if rule.covers(now):
            return rule.profile
    return default


# --- applying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuLimit:
    index: int
    requested_watts: float
    applied_watts: float
    clamped: bool  # the profile asked for more (or less) than the card allows
    previous_watts: float | None
    method: Literal["nvml", "nvidia-smi"]


@dataclass(frozen=True)
class ProfileResult:
    profile: str
    by: By
    gpus: list[GpuLimit]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refusal(index: int, exc: BaseException, watts: float) -> str:
    name = nvml_error_name(exc)
    if name == "NVML_ERROR_NO_PERMISSION":
        return (
            f"NVML refused to set GPU {index}'s power limit ({name}): changing it needs root. "
            "Run the node as root, or allow `sudo -n nvidia-smi` for the node's user (a "
            "sudoers line `<user> ALL=(root) NOPASSWD: /usr/bin/nvidia-smi`) and set "
            f"R3_POWER_SUDO_NVIDIA_SMI=true; by hand: sudo nvidia-smi -i {index} -pl {watts:.0f}"
        )
    if name == "NVML_ERROR_NOT_SUPPORTED":
        return (
            f"GPU {index} does not support setting a power limit ({name}); "
            "power profiles cannot work on this card"
        )
    return f"NVML could not set GPU {index}'s power limit ({name}: {exc})"


class PowerController:
    """Applies profiles through a GpuProbe; remembers the last profile applied."""

    def __init__(
        self,
        probe: GpuProbe,
        *,
        profiles: dict[str, float],
        schedule: Sequence[ScheduleRule] = (),
        default_profile: str = "normal",
        sudo_nvidia_smi: bool = False,
        runner: Runner | None = None,
    ) -> None:
        missing = set(PROFILES) - profiles.keys()
        if missing:
            raise PowerError("invalid", f"power profiles missing watts for {sorted(missing)}")
        if default_profile not in PROFILES:
            raise PowerError("invalid", f"default power profile {default_profile!r} unknown")
        self.probe = probe
        self.profiles = dict(profiles)
        self.schedule = list(schedule)
        self.default_profile = default_profile
        self.sudo_nvidia_smi = sudo_nvidia_smi
        self.runner = runner or self._run
        self.profile: str | None = None  # the last one applied on every GPU
        self.by: By | None = None
        self._last_scheduled: str | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=False)

    def _watts(self, name: str, *args: Any) -> float | None:
        try:
            return float(self.probe.call(name, *args)) / 1000.0  # NVML: milliwatts
        except Exception:
            return None

    def allowed_range(self, index: int) -> tuple[float, float] | None:
        """(min, max) watts the card accepts, or None when NVML cannot say."""
        handle = self.probe.handle(index)
        try:
            low, high = self.probe.call("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        except Exception:
            return None
        return low / 1000.0, high / 1000.0

    def state(self) -> dict[str, Any]:
        """What GET /power answers: profiles, schedule, and each GPU's limits."""
        gpus = None
        if self.probe.available:
            gpus = []
            for index in range(self.probe.count):
                handle = self.probe.handle(index)
                allowed = self.allowed_range(index)
                gpus.append(
                    {
                        "index": index,
                        "limit_watts": self._watts("nvmlDeviceGetPowerManagementLimit", handle),
                        "default_watts": self._watts(
                            "nvmlDeviceGetPowerManagementDefaultLimit", handle
                        ),
                        "min_watts": None if allowed is None else allowed[0],
                        "max_watts": None if allowed is None else allowed[1],
                        "draw_watts": self._watts("nvmlDeviceGetPowerUsage", handle),
                    }
                )
        return {
            "profile": self.profile,
            "set_by": self.by,
            "profiles": self.profiles,
            "schedule": [str(rule) for rule in self.schedule],
            "scheduled_profile": (
                scheduled_profile(self.schedule, datetime.now().time(), self.default_profile)
                if self.schedule
                else None
            ),
            "gpus": gpus,
            "reason": None if self.probe.available else self.probe.reason,
        }

    def apply(self, profile: str, *, gpu: int | None = None, by: By = "manual") -> ProfileResult:
        """Set `profile`'s watts (clamped) on one GPU or all; raises PowerError saying why not."""
        if profile not in PROFILES:
            raise PowerError(
                "invalid", f"unknown power profile {profile!r}; use one of {', '.join(PROFILES)}"
            )
        if not self.probe.available:
            raise PowerError(
                "unavailable", f"power profiles need an NVIDIA GPU and NVML: {self.probe.reason}"
            )
        indexes = range(self.probe.count) if gpu is None else [gpu]
        with self._lock:
            try:
                results = [self._apply_one(i, self.profiles[profile]) for i in indexes]
            except LookupError as exc:
                raise PowerError("invalid", str(exc)) from None
            if gpu is None:
                self.profile, self.by = profile, by
        log.info("power profile %s (%s): %s", profile, by, results)
        return ProfileResult(profile, by, results)

    def _apply_one(self, index: int, requested: float) -> GpuLimit:
        handle = self.probe.handle(index)
        allowed = self.allowed_range(index)
        applied = requested if allowed is None else min(max(requested, allowed[0]), allowed[1])
        previous = self._watts("nvmlDeviceGetPowerManagementLimit", handle)
        try:
            self.probe.call("nvmlDeviceSetPowerManagementLimit", handle, int(applied * 1000))
            method: Literal["nvml", "nvidia-smi"] = "nvml"
        except Exception as exc:
            refusal = _refusal(index, exc, applied)
            if not (self.sudo_nvidia_smi and nvml_error_name(exc) == "NVML_ERROR_NO_PERMISSION"):
                raise PowerError("refused", refusal) from None
            self._sudo_set(index, applied, refusal)
            method = "nvidia-smi"
        return GpuLimit(index, requested, applied, applied != requested, previous, method)

    def _sudo_set(self, index: int, watts: float, refusal: str) -> None:
        args = ["sudo", "-n", "nvidia-smi", "-i", str(index), "-pl", f"{watts:.0f}"]
        try:
            done = self.runner(args)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PowerError(
                "refused", f"{refusal}. Tried `{' '.join(args)}`: it could not run ({exc})"
            ) from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout or "").strip().splitlines()
            raise PowerError(
                "refused",
                f"{refusal}. Tried `{' '.join(args)}`: exit {done.returncode}"
                + (f" ({said[-1]})" if said else "")
                + "; check the sudoers line for nvidia-smi",
            )

    # -- schedule -----------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> ProfileResult | None:
        """Apply the schedule's profile when it changes (and at the first tick).

        Between changes a manual profile stands: the schedule acts at its boundaries only.
        """
        if not self.schedule or not self.probe.available:
            return None
        wanted = scheduled_profile(
            self.schedule, (now or datetime.now()).time(), self.default_profile
        )
        if wanted == self._last_scheduled:
            return None
        self._last_scheduled = wanted
        return self.apply(wanted, by="schedule")

    def run(self, stop: threading.Event, every_s: float = 30.0) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except PowerError as exc:  # logged once per boundary: tick() remembers it tried
                log.error("scheduled power profile not applied: %s", exc.reason)
            stop.wait(every_s)
