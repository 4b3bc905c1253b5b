"""Expected calibration error: one definition for the trainer's and the node's evaluations.

Torch-free, so the node-worker (an HTTP client of the node) can compute it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ECE_BINS = 10


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float | None:
    """ECE over equal-width bins of [0, 1]: Σ_b (n_b / N) · |accuracy_b − mean confidence_b|.

    A confidence of exactly 1.0 falls in the top bin. None when there is nothing to bin.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} verdicts")
    if not confidences:
        return None
    count = [0] * bins
    conf_sum = [0.0] * bins
    right = [0] * bins
    for conf, ok in zip(confidences, correct, strict=True):
        if not 0.0 <= conf <= 1.0 or math.isnan(conf):
            raise ValueError(f"confidence {conf} is not a probability")
        b = min(int(conf * bins), bins - 1)
        count[b] += 1
        conf_sum[b] += conf
        right[b] += ok
    total = len(confidences)
    return sum((n / total) * abs(right[b] / n - conf_sum[b] / n) for b, n in enumerate(count) if n)
