"""Training modes and the schedules that pick a mode for each example of a run."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from codec.errors import DomainError


class Mode(StrEnum):
    ENGLISH = "english"
    CANONICAL = "canonical"
    ENCODED = "encoded"
    MIXED = "mixed"
    TRANSITIONAL = "transitional"
    # Token Assorted (Su et al. 2025): the first m steps of the canonical reasoning in codes,
    # the rest in canonical text, m drawn per example from 0..n (n = the number of steps).
    ASSORTED = "assorted"


# The three pure renderings that mixed and transitional schedules draw from.
RENDER_MODES = (Mode.ENGLISH, Mode.CANONICAL, Mode.ENCODED)
# Every mode `Problem.render` takes: the pure ones and assorted (itself a per-example mix).
CONCRETE_MODES = (*RENDER_MODES, Mode.ASSORTED)
# Modes whose reasoning may hold <E###> codes: they need a codebook.
CODED_MODES = (Mode.ENCODED, Mode.MIXED, Mode.TRANSITIONAL, Mode.ASSORTED)


class Schedule(Protocol):
    def mode_for(self, index: int, rng: random.Random) -> Mode:
        """The concrete mode (one of CONCRETE_MODES) of example number `index`."""
        ...


@dataclass(frozen=True)
class FixedSchedule:
    mode: Mode

    def mode_for(self, index: int, rng: random.Random) -> Mode:
        return self.mode


@dataclass(frozen=True)
class MixedSchedule:
    """Each example draws its mode with these weights (they need not sum to 1)."""

    english: float = 1 / 3
    canonical: float = 1 / 3
    encoded: float = 1 / 3

    def __post_init__(self) -> None:
        weights = (self.english, self.canonical, self.encoded)
        if min(weights) < 0 or sum(weights) <= 0:
            raise DomainError(
                f"mixed fractions {weights} must be non-negative and not all zero; "
                "pass e.g. english=0.2 canonical=0.3 encoded=0.5"
            )

    def mode_for(self, index: int, rng: random.Random) -> Mode:
        return rng.choices(RENDER_MODES, weights=(self.english, self.canonical, self.encoded))[0]


@dataclass(frozen=True)
class TransitionalSchedule:
    """English first, encoded last, canonical in between, over `total` examples (or steps).

    Progress p = index / total is mapped to t in [0, 1], 0 before `start` and 1 after `end`;
    the mode weights are the Bernstein polynomials english (1-t)^2, canonical 2t(1-t),
    encoded t^2, so the run moves smoothly English -> canonical -> encoded.
    """

    total: int
    start: float = 0.1
    end: float = 0.9

    def __post_init__(self) -> None:
        if self.total <= 0:
            raise DomainError(f"transitional total must be positive, got {self.total}")
        if not 0 <= self.start < self.end <= 1:
            raise DomainError(
                f"transitional start={self.start} end={self.end}: need 0 <= start < end <= 1"
            )

    def weights(self, index: int) -> tuple[float, float, float]:
        progress = index / self.total
        t = min(1.0, max(0.0, (progress - self.start) / (self.end - self.start)))
        return ((1 - t) ** 2, 2 * t * (1 - t), t**2)

    def mode_for(self, index: int, rng: random.Random) -> Mode:
        return rng.choices(RENDER_MODES, weights=self.weights(index))[0]


def schedule_for(
    mode: Mode,
    *,
    total: int,
    mixed: MixedSchedule | None = None,
    start: float = 0.1,
    end: float = 0.9,
) -> Schedule:
    """The schedule for a run of `total` examples in `mode`."""
    if mode is Mode.MIXED:
        return mixed or MixedSchedule()
    if mode is Mode.TRANSITIONAL:
        return TransitionalSchedule(total=total, start=start, end=end)
    return FixedSchedule(mode)
