"""Training modes and schedules."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from codec.errors import DomainError
from codec.modes import (
    FixedSchedule,
    MixedSchedule,
    Mode,
    TransitionalSchedule,
    schedule_for,
)


def test_fixed_mode() -> None:
    schedule = schedule_for(Mode.CANONICAL, total=10)
    assert isinstance(schedule, FixedSchedule)
    assert {schedule.mode_for(i, random.Random(0)) for i in range(10)} == {Mode.CANONICAL}


def test_mixed_follows_its_fractions() -> None:
    schedule = MixedSchedule(english=0.2, canonical=0.0, encoded=0.8)
    rng = random.Random(1)
    counts = Counter(schedule.mode_for(i, rng) for i in range(5000))
    assert counts[Mode.CANONICAL] == 0
    assert 0.17 < counts[Mode.ENGLISH] / 5000 < 0.23


def test_mixed_refuses_bad_fractions() -> None:
    with pytest.raises(DomainError, match="non-negative"):
        MixedSchedule(english=-1)
    with pytest.raises(DomainError, match="not all zero"):
        MixedSchedule(english=0, canonical=0, encoded=0)


def test_transitional_moves_from_english_to_encoded() -> None:
    schedule = TransitionalSchedule(total=1000)
    assert schedule.weights(0) == (1.0, 0.0, 0.0)
    assert schedule.weights(999) == (0.0, 0.0, 1.0)
    middle = schedule.weights(500)
    assert middle[1] == max(middle)
    rng = random.Random(2)
    modes = [schedule.mode_for(i, rng) for i in range(1000)]
    assert set(modes[:100]) == {Mode.ENGLISH}
    assert set(modes[900:]) == {Mode.ENCODED}
    early = sum(m is Mode.ENCODED for m in modes[100:500])
    late = sum(m is Mode.ENCODED for m in modes[500:900])
    assert late > early


def test_transitional_validates() -> None:
    with pytest.raises(DomainError, match="total"):
        TransitionalSchedule(total=0)
    with pytest.raises(DomainError, match="start"):
        TransitionalSchedule(total=10, start=0.9, end=0.1)
