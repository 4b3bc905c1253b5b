"""Confidence is the probability of the answer's own tokens, the same on the trainer and node."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from codec.problem import STOP, THINK
from services.model.loading import load_tokenizer
from services.node.worker.evaluation import answer_confidence as node_confidence
from services.node.worker.node_client import Scored
from services.validation.calibration import (
    answer_confidence,
    answer_span,
    decoded_offsets,
    expected_calibration_error,
    text_confidence,
)

OUTPUT = f"{THINK * 4}\nAll cats are animals, Tom is a cat.\n{STOP * 3}\nvalid"


@pytest.fixture(scope="module")
def tokenizer(embedded_dir: Path):  # type: ignore[no-untyped-def]
    return load_tokenizer(embedded_dir)


def _logprobs(text: str, offsets: list[tuple[int, int]]) -> list[float]:
    """The answer's tokens 0.9 each; the newline after the last 🛑 0.3 (the model hesitating
    between a third and a fourth 🛑); everything else 0.99."""
    lo, hi = answer_span(text) or (0, 0)
    newline = text.rindex("\n")
    out = []
    for start, end in offsets:
        if start < hi and end > lo:
            out.append(math.log(0.9))
        elif start <= newline < end:
            out.append(math.log(0.3))
        else:
            out.append(math.log(0.99))
    return out


def test_the_stop_markers_and_the_newline_after_them_do_not_count(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(OUTPUT, add_special_tokens=False)["input_ids"]
    decode = tokenizer.decode
    assert decode(ids) == OUTPUT
    offsets = decoded_offsets(decode, ids)
    logps = _logprobs(OUTPUT, offsets)
    answer_tokens = sum(1 for lp in logps if lp == math.log(0.9))
    assert answer_tokens >= 1
    conf = text_confidence(decode, ids, logps)
    # Only the answer's tokens: the 0.3 of the newline (the stop decision) is not in it.
    assert conf == pytest.approx(0.9**answer_tokens)

    # The node scores the same text over HTTP with character offsets: the same number.
    scored = Scored(model="m", tokens=[""] * len(ids), logprobs=logps, offsets=offsets, ce=None)
    assert node_confidence(scored, answer_span(OUTPUT)) == pytest.approx(conf)


def test_a_sure_right_answer_is_calibrated_whatever_the_stop_decision_cost() -> None:
    # EM 1.0 and the answer certain: ECE ~0 whether the newline after 🛑 was 0.3 or 0.99 likely.
    text = f"{STOP * 3}\n42"
    span = answer_span(text)
    assert span == (len(text) - 2, len(text))
    offsets = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 6)]
    for newline in (0.3, 0.99):
        logps = [0.0, 0.0, 0.0, math.log(newline), math.log(0.999)]
        conf = answer_confidence(offsets, logps, span)
        assert expected_calibration_error([conf] * 20, [True] * 20) == pytest.approx(0.001)


def test_no_answer_means_no_confidence(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(f"{THINK * 4}\nstill thinking", add_special_tokens=False)["input_ids"]
    assert text_confidence(tokenizer.decode, ids, [0.0] * len(ids)) is None
    assert answer_span(f"{THINK}\nx\n{STOP * 2}\n") is None
