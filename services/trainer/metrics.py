"""Streaming training figures: CE EMA, loss variance, throughput, ETA, running accuracy, trends.

Trend rule (both `loss_trend` and `accuracy_trend`): compare the mean of the latest window
with the mean of the window just before it (`TREND_WINDOW` values each; `None` until both are
full). A change of more than `TREND_TOLERANCE` (relative, for loss) or `ACCURACY_TOLERANCE`
percentage points (for accuracy) in the good direction is "improving", in the bad direction
"degrading", anything smaller "stable". Loss improves by falling, accuracy by rising.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Trend = Literal["improving", "stable", "degrading"]

EMA_ALPHA = 0.1  # streaming CE: about the last 10 steps weigh most
VARIANCE_WINDOW = 50  # steps whose loss variance is reported
TREND_WINDOW = 20
TREND_TOLERANCE = 0.02  # 2 % relative change in mean loss
ACCURACY_WINDOW = 10  # samples per window for the accuracy trend (samples are rare)
ACCURACY_TOLERANCE = 5.0  # percentage points
HISTORY = 1000  # bounded histories kept in the status hash


def trend(
    values: Sequence[float], window: int, tolerance: float, *, lower_is_better: bool
) -> Trend | None:
    """The module's trend rule on the last `2 * window` values (absolute `tolerance`)."""
    if len(values) < 2 * window:
        return None
    recent = list(values)[-window:]
    before = list(values)[-2 * window : -window]
    change = sum(recent) / window - sum(before) / window
    if lower_is_better:
        change = -change
    if change > tolerance:
        return "improving"
    if change < -tolerance:
        return "degrading"
    return "stable"


@dataclass
class LossStats:
    """Streaming CE (EMA), variance over a window, token entropy and the loss trend."""

    streaming_ce: float | None = None
    token_entropy: float | None = None

    def __post_init__(self) -> None:
        self.window: deque[float] = deque(maxlen=VARIANCE_WINDOW)
        self.history: deque[float] = deque(maxlen=HISTORY)

    def add(self, loss: float, entropy: float | None = None) -> None:
        if not math.isfinite(loss):
            return  # one bad step must not poison the EMA for hundreds of steps
        self.streaming_ce = (
            loss
            if self.streaming_ce is None
            else EMA_ALPHA * loss + (1 - EMA_ALPHA) * self.streaming_ce
        )
        self.window.append(loss)
        self.history.append(loss)
        if entropy is not None:
            self.token_entropy = entropy

    @property
    def loss_variance(self) -> float | None:
        n = len(self.window)
        if n < 2:
            return None
        mean = sum(self.window) / n
        return sum((x - mean) ** 2 for x in self.window) / (n - 1)

    @property
    def loss_trend(self) -> Trend | None:
        if len(self.history) < 2 * TREND_WINDOW:
            return None
        recent = list(self.history)[-2 * TREND_WINDOW :]
        scale = abs(sum(recent[:TREND_WINDOW]) / TREND_WINDOW) or 1.0
        return trend(recent, TREND_WINDOW, TREND_TOLERANCE * scale, lower_is_better=True)


class Throughput:
    """Tokens per second and seconds per step, smoothed over the last `window` steps."""

    def __init__(self, window: int = 20) -> None:
        self.steps: deque[tuple[float, int]] = deque(maxlen=window)  # (seconds, tokens)
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self, tokens: int) -> float:
        """End a step begun with `start`; returns its seconds."""
        if self._started is None:
            raise RuntimeError("Throughput.stop() without start()")
        seconds = time.perf_counter() - self._started
        self.steps.append((seconds, tokens))
        self._started = None
        return seconds

    @property
    def tokens_per_sec(self) -> float | None:
        seconds = sum(s for s, _ in self.steps)
        return sum(t for _, t in self.steps) / seconds if seconds > 0 else None

    @property
    def seconds_per_step(self) -> float | None:
        return sum(s for s, _ in self.steps) / len(self.steps) if self.steps else None

    def eta_seconds(self, steps_left: int | None) -> float | None:
        per_step = self.seconds_per_step
        if steps_left is None or per_step is None:
            return None
        return max(0, steps_left) * per_step


def estimate_total_steps(steps_done: int, fraction_done: float) -> int | None:
    """Steps a file will take, from the steps so far and the fraction of its examples done."""
    if steps_done <= 0 or fraction_done <= 0:
        return None
    return max(steps_done, round(steps_done / min(fraction_done, 1.0)))


class Accuracy:
    """Running accuracy of the in-loop samples: total, last 20, last 50, trend, history."""

    def __init__(self) -> None:
        self.total = 0
        self.correct = 0
        self.recent: deque[bool] = deque(maxlen=50)
        self.history: deque[float] = deque(maxlen=HISTORY)  # running accuracy (0..1) per eval

    def add(self, matched: bool) -> None:
        self.total += 1
        self.correct += matched
        self.recent.append(matched)
        self.history.append(self.correct / self.total)

    @staticmethod
    def _percent(values: Sequence[bool]) -> float | None:
        return 100.0 * sum(values) / len(values) if values else None

    @property
    def percent(self) -> float | None:
        return 100.0 * self.correct / self.total if self.total else None

    @property
    def last_20(self) -> float | None:
        return self._percent(list(self.recent)[-20:])

    @property
    def last_50(self) -> float | None:
        return self._percent(list(self.recent))

    @property
    def trend(self) -> Trend | None:
        points = [100.0 * m for m in self.recent]
        return trend(points, ACCURACY_WINDOW, ACCURACY_TOLERANCE, lower_is_better=False)

    def fields(self) -> dict[str, object]:
        """The TrainingStatus / TrainSample accuracy fields."""
        return {
            "total_evals": self.total,
            "total_correct": self.correct,
            "accuracy_percent": self.percent,
            "accuracy_last_20": self.last_20,
            "accuracy_last_50": self.last_50,
            "accuracy_trend": self.trend,
        }
