"""The fixed-eval trend rule: improving, stable or degrading, from the exact-match history."""

from __future__ import annotations

from collections.abc import Sequence

from bus.events import Trend as Trend

# One rule for every fixed-eval trend, the trainer's and the node's (each over its own scorer's
# history of the set).
TREND_WINDOW = 3  # earlier evaluations the new one is compared with
TREND_MARGIN = 0.02  # absolute EM change that counts as a move rather than noise


def em_trend(previous: Sequence[float], current: float) -> Trend | None:
    """`improving` when EM is more than TREND_MARGIN above the mean of the last TREND_WINDOW
    earlier EMs of the same set, `degrading` when more than TREND_MARGIN below, else `stable`;
    None when there is no earlier evaluation."""
    window = list(previous)[-TREND_WINDOW:]
    if not window:
        return None
    base = sum(window) / len(window)
    if current > base + TREND_MARGIN:
        return "improving"
    if current < base - TREND_MARGIN:
        return "degrading"
    return "stable"
