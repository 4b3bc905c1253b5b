"""Training metrics: streaming figures (CE EMA, variance, throughput, ETA, accuracy, trends) and
their publication each step (train.step, train.layers, train.sample, the status hash).

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
from datetime import datetime
from typing import Any

import redis

from bus import queues
from bus.events import TrainLayers, TrainSample, TrainStatus, TrainStep, Trend
from bus.history import HistoryWriter
from bus.keys import TRAIN_QUEUES
from bus.publish import Publisher
from bus.status import StatusStore
from bus.worker import report_progress
from services.feeder.backlog import LineCounter, Waiting, training_backlog
from services.trainer.gpu import GpuMeter, GpuSample
from services.trainer.sampling import SampleResult

EMA_ALPHA = 0.1  # streaming CE: about the last 10 steps weigh most
VARIANCE_WINDOW = 50  # steps whose loss variance is reported
TREND_WINDOW = 20
TREND_TOLERANCE = 0.02  # 2 % relative change in mean loss
ACCURACY_WINDOW = 10  # samples per window for the accuracy trend (samples are rare)
ACCURACY_TOLERANCE = 5.0  # percentage points
HISTORY = 1000  # bounded histories kept in the status hash
BACKLOG_REFRESH_S = 30.0  # the queue's files are re-read at least this often (and on a change)


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


@dataclass(frozen=True)
class StepFigures:
    """What the loop knows about one optimizer step it has just taken."""

    step: int  # the global step number
    epoch: int  # 1-based pass over the current file
    loss: float
    learning_rate: float
    grad_norm: float
    entropy: float
    loss_tokens: int
    rows: int
    rows_per_batch: int
    file_step: int
    examples_done: int
    total_examples: int  # of the file (times epochs), from validation
    files_taken: int
    current_file: str
    layers: dict[str, dict[str, float]] | None = None


class QueueProgress:
    """The whole training queue's progress: what waits by priority, and the time to train it
    at the measured tokens/s. Tokens of waiting files are estimated from the current file's
    tokens per example (a queued file is not tokenized until it is trained)."""

    def __init__(self, connection: redis.Redis, epochs: int = 1) -> None:
        self.connection = connection
        # Each waiting file is trained this many times, as the current one's total counts.
        self.epochs = epochs
        self.counter = LineCounter()
        self.waiting: dict[str, Waiting] = {}
        self._read_at = -math.inf
        self._depth = -1
        self._file: tuple[str, int] | None = None
        self.file_tokens = 0  # tokens trained from the current file
        self.file_examples = 0

    def add_step(self, f: StepFigures, tokens: int) -> None:
        file = (f.current_file, f.files_taken)
        if file != self._file or f.examples_done < self.file_examples:
            self._file, self.file_tokens = file, 0
        self.file_tokens += tokens
        self.file_examples = f.examples_done

    def refresh(self, depth: int) -> None:
        now = time.monotonic()
        if depth != self._depth or now - self._read_at >= BACKLOG_REFRESH_S:
            self.waiting = training_backlog(self.connection, self.counter)
            self._depth, self._read_at = depth, now

    def fields(self, f: StepFigures, tokens_per_sec: float | None) -> dict[str, Any]:
        per_example = self.file_tokens / self.file_examples if self.file_examples else None
        backlog: dict[str, dict[str, float]] = {}
        tokens_left = 0.0
        for priority, w in self.waiting.items():
            examples = w.examples * self.epochs
            tokens = examples * per_example if per_example is not None else None
            backlog[priority] = {"files": w.files, "examples": examples}
            if tokens is not None:
                backlog[priority]["tokens"] = round(tokens)
                tokens_left += tokens
        eta = None
        if per_example is not None and tokens_per_sec:
            file_left = max(0, f.total_examples - f.examples_done) * per_example
            eta = (file_left + tokens_left) / tokens_per_sec
        return {
            "file_examples_done": f.examples_done,
            "file_examples_total": f.total_examples or None,
            "queue_backlog": backlog,
            "queue_eta_seconds": eta,
        }


def _now_iso() -> str:
    return datetime.now().isoformat(timespec="seconds")


class Reporter:
    """Turns each step into a `train.step` event (every `log_steps`), `train.layers` when the
    layer monitor ran, `train.sample` for each in-loop sample, and keeps the status hash
    current. Holds the streaming figures, so they continue across files."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        log_steps: int = 1,
        epochs: int = 1,
        gpu: GpuMeter | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.connection = connection
        self.publisher = publisher or Publisher(connection)
        self.status = StatusStore(connection)
        self.log_steps = log_steps
        self.gpu = gpu
        self.loss = LossStats()
        self.accuracy = Accuracy()
        self.throughput = Throughput()
        self.queue = QueueProgress(connection, epochs)
        # Rollups for the dashboard's history of weeks-long runs (bus/history.py).
        self.history = HistoryWriter(connection, self.publisher.settings.run_id)
        self._status: str | None = None  # the last status published as train.status

    def step(self, f: StepFigures) -> None:
        self.loss.add(f.loss, f.entropy)
        fraction = f.examples_done / f.total_examples if f.total_examples else 0.0
        file_total = estimate_total_steps(f.file_step, fraction)
        steps_left = file_total - f.file_step if file_total is not None else None
        waiting = queues.depths(self.connection)
        queued = sum(waiting[q] for q in TRAIN_QUEUES)
        self.queue.add_step(f, self.throughput.steps[-1][1] if self.throughput.steps else 0)
        self.queue.refresh(queued)
        gpu = self.gpu.read() if self.gpu is not None else GpuSample()
        fields: dict[str, Any] = {
            "current_step": f.step,
            "total_steps": f.step + steps_left if steps_left is not None else None,
            "epoch": f.epoch,
            "loss": f.loss,
            "learning_rate": f.learning_rate,
            "streaming_ce": self.loss.streaming_ce,
            "loss_variance": self.loss.loss_variance,
            "token_entropy": self.loss.token_entropy,
            "tokens_per_sec": self.throughput.tokens_per_sec,
            "eta_seconds": self.throughput.eta_seconds(steps_left),
            "batch_step": f.file_step,
            "batch_total_steps": file_total,
            "batch_number": f.files_taken,
            "batch_queue_size": queued,
            "current_file": f.current_file,
            **gpu.as_fields(),
        }
        if self._status != "training":
            self._publish_status("training", current_file=f.current_file, current_step=f.step)
        if f.step % self.log_steps == 0:
            self.publisher.publish(
                TrainStep(
                    **fields,
                    **self.queue.fields(f, self.throughput.tokens_per_sec),
                    grad_norm=f.grad_norm,
                    tokens=f.loss_tokens,
                    micro_batch=f.rows_per_batch,
                    grad_accum=math.ceil(f.rows / f.rows_per_batch),
                )
            )
            self.history.add(
                f.step,
                time.time(),
                {
                    "loss": f.loss,
                    "ce": self.loss.streaming_ce,
                    "tps": self.throughput.tokens_per_sec,
                },
            )
        if f.layers is not None:
            self.publisher.publish(
                TrainLayers(current_step=f.step, layer_activity_summary=f.layers)
            )
            fields["layer_activity_summary"] = f.layers
        self.status.update(
            **fields,
            status="training",
            loss_trend=self.loss.loss_trend,
            train_loss_history=list(self.loss.history),
            timestamp=_now_iso(),
        )
        if f.file_step % 10 == 0:
            report_progress(f.file_step, file_total, unit="steps")

    def sample(self, step: int, result: SampleResult) -> None:
        self.accuracy.add(result.matches)
        figures = self.accuracy.fields()
        self.publisher.publish(
            TrainSample(
                current_step=step,
                current_prompt=result.prompt,
                golden_answer=result.golden,
                model_answer=result.answer,
                answer_matches=result.matches,
                parse_failed=result.parse_failed,
                canonical_answer=result.canonical_answer,
                **figures,
            )
        )
        self.history.add(
            step,
            time.time(),
            {"acc": self.accuracy.percent, "acc20": self.accuracy.last_20},
        )
        self.status.update(
            current_prompt=result.prompt,
            golden_answer=result.golden,
            model_answer=result.answer,
            answer_matches=result.matches,
            accuracy_history=list(self.accuracy.history),
            **figures,
        )

    def set_status(self, status: str, **fields: Any) -> None:
        self.status.update(status=status, timestamp=_now_iso(), **fields)
        self._publish_status(status, **fields)

    def _publish_status(self, status: str, **fields: Any) -> None:
        """A `train.status` event, so the dashboard learns of a change without polling."""
        self._status = status
        names = ("model_name", "current_file", "current_step")
        known = {k: fields[k] for k in names if k in fields}
        if "model_name" not in known:
            known["model_name"] = self.status.read().model_name
        self.publisher.publish(TrainStatus(status=status, **known))
