"""Out-of-memory back-off: halve the micro-batch, double accumulation, retry the same step."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from services.trainer.errors import TrainerError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StepOutOfMemory(TrainerError):
    """A step ran out of memory even with one packed row per micro-batch."""


@dataclass(frozen=True)
class Backoff:
    """One recovered out-of-memory: the micro-batch before and after halving."""

    step: int
    rows_before: int
    rows_after: int
    # True when this out-of-memory turned activation checkpointing on instead of halving
    # the micro-batch (rows_after == rows_before then).
    checkpointing: bool = False


def free_memory() -> None:
    """Drop what the failed attempt left (the exception's frames hold activations)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_backoff(
    attempt: Callable[[int], T],
    rows_per_batch: int,
    *,
    step: int,
    reset: Callable[[], None],
    on_backoff: Callable[[Backoff], None],
    lighten: Callable[[], bool] | None = None,
) -> tuple[T, int]:
    """Run `attempt(rows_per_batch)` (all micro-batches of one step); on an out-of-memory,
    `reset()` (zero the gradients: a partial accumulation must not count), then first try
    `lighten()` (turn activation checkpointing on; True if it changed anything) at the same
    rows, else halve the rows per micro-batch, and try the whole step again. The step's rows,
    and so its loss and global batch, are unchanged: only accumulation grows.

    Returns the attempt's result and the rows per micro-batch that worked (callers keep it, so
    the next steps do not hit the same wall). Raises StepOutOfMemory when one row is too much.
    """
    rows = rows_per_batch
    while True:
        try:
            return attempt(rows), rows
        except torch.OutOfMemoryError as exc:
            reset()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
            del exc  # its traceback holds the failed attempt's activations
            free_memory()
            if lighten is not None and lighten():
                log.warning(
                    "step %d: out of memory at %d rows per micro-batch; activation "
                    "checkpointing turned on, retrying at the same size",
                    step,
                    rows,
                )
                on_backoff(Backoff(step, rows, rows, checkpointing=True))
                continue
            if rows <= 1:
                raise StepOutOfMemory(
                    f"step {step}: out of memory with a single packed row per micro-batch "
                    f"({reason}). Lower R3_MAX_LENGTH, set R3_ACTIVATION_CHECKPOINTING=auto or "
                    "true, "
                    "lower R3_LOSS_CHUNK_TOKENS, or use a GPU with more memory."
                ) from None
            smaller = max(1, rows // 2)
            log.warning(
                "step %d: out of memory at %d rows per micro-batch; retrying with %d",
                step,
                rows,
                smaller,
            )
            on_backoff(Backoff(step, rows, smaller))
            rows = smaller
