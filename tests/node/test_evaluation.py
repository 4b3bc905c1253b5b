"""The node's evaluation: eval sets, and the one scorer's figures as the node publishes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import redis

from bus.events import EvalResult
from bus.publish import Publisher
from codec.evaluate import evaluate_output
from codec.modes import Mode
from services.node.worker import evaluation
from services.node.worker.evaluation import (
    EvalSetError,
    answer_confidence,
    answer_span,
    expected_calibration_error,
    resolve_eval_set,
)
from services.node.worker.node_client import Scored
from services.validation import scorer


def test_ece_of_a_hand_computed_case() -> None:
    # Bin 9 (0.9, 0.95): both right, mean confidence 0.925 → |1 − 0.925| = 0.075, weight 2/5.
    # Bin 6 (0.6, 0.6, 0.6): one right in three → |1/3 − 0.6| = 0.2667, weight 3/5.
    confidences = [0.9, 0.95, 0.6, 0.6, 0.6]
    correct = [True, True, True, False, False]
    expected = 2 / 5 * 0.075 + 3 / 5 * abs(1 / 3 - 0.6)
    assert expected_calibration_error(confidences, correct) == pytest.approx(expected)


def test_ece_bins_are_ten_equal_widths_and_one_falls_in_the_top_bin() -> None:
    # 0.05 and 0.15 sit in different bins: one bin would give |0.5 − 0.1| = 0.4.
    assert expected_calibration_error([0.05, 0.15], [False, True]) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.85
    )
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert expected_calibration_error([], []) is None
    with pytest.raises(ValueError, match="not a probability"):
        expected_calibration_error([1.5], [True])


def _scored(logprobs: list[float], offsets: list[tuple[int, int]] | None = None) -> Scored:
    offsets = offsets or [(i, i + 1) for i in range(len(logprobs))]
    return Scored("m", ["x"] * len(logprobs), logprobs, offsets, None)


def test_answer_confidence_multiplies_the_answer_tokens_only() -> None:
    raw = "🤔🤔🤔🤔\nthink\n🛑🛑\n21"
    span = answer_span(raw)
    assert span is not None and raw[span[0] : span[1]] == "21"
    # tokens: markers and reasoning, then "\n2" (straddles the answer's start), "1", end-of-turn
    n = len(raw)
    offsets = [(0, span[0] - 1), (span[0] - 1, span[0] + 1), (span[0] + 1, n), (n, n)]
    conf = answer_confidence(_scored([-5.0, math.log(0.5), math.log(0.8), -3.0], offsets), span)
    assert conf == pytest.approx(0.4)
    assert answer_span("no markers at all") is None
    assert answer_span("🤔\nthinking\n🛑🛑\n") is None


def test_previous_ems_reads_the_same_set_from_the_eval_stream(r: redis.Redis) -> None:
    pub = Publisher(r)
    for em, name, by in [(0.1, "a", "trainer"), (0.2, "b", "node:n"), (0.3, "a", "node:n")]:
        pub.publish(
            EvalResult(
                model_id="m", eval_set=name, total=10, correct=1, fixed_eval_em=em, scorer=by
            )
        )
    assert evaluation.previous_ems(r, "a") == [0.1, 0.3]
    # The node's trend follows the node's own results of the set, not the trainer's.
    assert evaluation.previous_ems(r, "a", scorer="node:n") == [0.3]


def test_builtin_sets_are_fixed_heldout_problems() -> None:
    items = resolve_eval_set("arithmetic:2", validation_dir=Path("unused"), mode=Mode.CANONICAL)
    again = resolve_eval_set("arithmetic:2", validation_dir=Path("unused"), mode=Mode.CANONICAL)
    assert [i.id for i in items] == [i.id for i in again]
    assert len(items) == evaluation.BUILTIN_PER_LEVEL
    assert {(i.domain, i.difficulty) for i in items} == {("arithmetic", 2)}
    first = items[0]
    assert first.prompt[0]["role"] == "user" and first.completion.startswith("🤔")
    assert evaluate_output(first.completion, first.golden).match  # the golden turn verifies
    every = resolve_eval_set("syllogism", validation_dir=Path("unused"), limit=7)
    assert len(every) == 7
    with pytest.raises(EvalSetError, match="no built-in domain"):
        resolve_eval_set("astrology", validation_dir=Path("unused"))


def test_a_jsonl_file_in_the_training_format(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "🤔🤔🤔🤔\nadd\n🛑🛑\n4"},
            ],
            "meta": {"domain": "arithmetic", "difficulty": 1},
        },
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]},
    ]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    [item] = resolve_eval_set(str(path), validation_dir=tmp_path, limit=1)
    assert (item.golden, item.domain, item.difficulty) == ("4", "arithmetic", 1)
    with pytest.raises(EvalSetError, match=r":2: no meta\.golden"):
        resolve_eval_set(str(path), validation_dir=tmp_path)
    with pytest.raises(EvalSetError, match="does not exist"):
        resolve_eval_set(str(tmp_path / "missing.jsonl"), validation_dir=tmp_path)


def test_a_stored_validation_set_name_goes_through_services_validation(tmp_path: Path) -> None:
    from services.validation import sets

    items = resolve_eval_set("word-d1-canonical", validation_dir=tmp_path)
    stored = sets.load_set(sets.set_path(tmp_path, "word", 1, "canonical"))
    assert [i.id for i in items] == [s.id for s in stored]
    assert items[0].completion == stored[0].messages[-1]["content"]


def _answer(
    domain: str, level: int, output: str, golden: str, conf: float | None, lps: list[float]
) -> scorer.ItemAnswer:
    verdict = evaluate_output(output, golden)
    return scorer.ItemAnswer("id", domain, level, output, verdict, lps, conf)


def test_the_event_of_a_hand_checkable_run() -> None:
    answers = [
        _answer("arithmetic", 1, "🤔\nx\n🛑🛑\n4", "4", 0.9, [-1.0, -1.0]),  # right, bin 9
        _answer("arithmetic", 1, "🤔\nx\n🛑🛑\n5", "4", 0.7, [-2.0]),  # wrong, bin 7
        _answer("arithmetic", 2, "🤔\nx\n🛑🛑\n(add 1 2)", "(add 2 1)", 0.3, [-3.0]),  # right
        _answer("word", 1, "never stops", "9", None, [-0.5, -0.5]),  # parse failure
    ]
    result = scorer.summarize(answers, scorer="node:n1", model="model-3", max_tokens=40)
    report = evaluation.report_of(
        result, eval_set="tiny", step=40, train_ce=1.0, previous=[0.2, 0.2, 0.2]
    )
    e = report.event
    assert (e.model_id, e.eval_set, e.step) == ("model-3", "tiny", 40)
    assert (e.scorer, e.max_tokens) == ("node:n1", 40)
    assert (e.total, e.correct, e.parse_failures) == (4, 2, 1)
    assert e.fixed_eval_em == pytest.approx(0.5)
    assert e.fixed_eval_ce == pytest.approx(8.0 / 6)  # 2 + 2 + 3 + 1 nats over 6 tokens
    # Three calibrated items in bins 9, 7, 3: |1 − .9|, |0 − .7|, |1 − .3|, each weighing 1/3.
    assert e.fixed_eval_ece == pytest.approx((0.1 + 0.7 + 0.7) / 3)
    assert e.val_train_gap == pytest.approx(8.0 / 6 - 1.0)
    assert e.fixed_eval_trend == "improving"
    assert e.pattern_heatmap == {"arithmetic": {"1": 0.5, "2": 1.0}, "word": {"1": 0.0}}
    assert e.pattern_counts == {"arithmetic": {"1": 2, "2": 1}, "word": {"1": 1}}
    assert report.heatmap["total"]["parse_failed"] == 1
