"""The one scorer's rules on a small honest backend: budget, EM, CE, answer CE, thinking
tokens, confidence, ECE, counts."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pytest

from services.validation import scorer
from services.validation.scorer import (
    Generated,
    ModelChanged,
    ScoreItem,
    ScoreRequest,
    TokenScores,
    answer_budget,
    score_set,
    thinking_span,
)


class TableBackend:
    """Answers and scores from tables: one token per character, each with a fixed logprob."""

    name = "table"

    def __init__(
        self,
        answers: dict[str, str],
        logprob: float,
        model: str = "m",
        answer_logprob: float | None = None,
    ) -> None:
        self.answers = answers
        self.logprob = logprob
        # The logprob of the tokens after the last 🛑 (the answer), when it differs.
        self.answer_logprob = logprob if answer_logprob is None else answer_logprob
        self.model = model
        self.budgets: list[int] = []
        self.scored: list[ScoreRequest] = []

    def generate(self, prompts: Sequence[scorer.Messages], max_tokens: int) -> list[Generated]:
        self.budgets.append(max_tokens)
        return [Generated(self.answers[p[0]["content"]], self.model) for p in prompts]

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        self.scored.extend(requests)
        out = []
        for r in requests:
            n = len(r.completion) + (1 if r.end_of_turn else 0)
            offsets = [(i, i + 1) for i in range(len(r.completion))]
            offsets += [(len(r.completion),) * 2] * (n - len(offsets))
            after = r.completion.rfind("🛑") + 1 if "🛑" in r.completion else len(r.completion)
            lps = [
                self.answer_logprob if after <= start < len(r.completion) else self.logprob
                for start, _ in offsets
            ]
            out.append(TokenScores(self.model, lps, offsets))
        return out


def _item(
    q: str, completion: str, golden: str, domain: str = "arithmetic", level: int = 1
) -> ScoreItem:
    return ScoreItem(q, [{"role": "user", "content": q}], completion, golden, domain, level)


ITEMS = [
    _item("a", "🤔\nx\n🛑🛑\n4", "4"),
    _item("b", "🤔\nx\n🛑🛑\n6", "6", level=2),
    _item("c", "🤔\nlonger reasoning\n🛑🛑\n1/2", "0.5", domain="word"),
]


def test_budget_follows_the_longest_golden_turn_under_the_ceiling() -> None:
    assert answer_budget([10, 40], ceiling=1000) == 40 + 16  # the margin's floor
    assert answer_budget([100], ceiling=1000) == 125  # a quarter more
    assert answer_budget([100], ceiling=120) == 120  # the ceiling may cut the share
    assert answer_budget([], ceiling=64) == 16


def test_a_ceiling_under_the_references_never_cuts_them(caplog: pytest.LogCaptureFixture) -> None:
    # Issue 16: R3_EVAL_MAX_TOKENS=96 under English answers of ~130 tokens zeroed every
    # English checkpoint. The budget covers the longest reference plus the fixed margin.
    assert answer_budget([100], ceiling=64) == 116
    assert answer_budget([130, 20], ceiling=96) == 146
    long_answer = "🤔\n" + "all a are b, so " * 8 + "\n🛑🛑\n4"
    backend = TableBackend({"a": long_answer}, 0.0)
    with caplog.at_level(logging.WARNING, logger="services.validation.scorer"):
        result = score_set(backend, [_item("a", long_answer, "4")], ceiling=96)
    assert len(long_answer) + 1 > 96  # the reference is longer than the ceiling
    assert backend.budgets == [len(long_answer) + 1 + 16] == [result.max_tokens]
    assert result.correct == 1
    assert "raised from the ceiling of 96" in caplog.text and "R3_EVAL_MAX_TOKENS" in caplog.text


def test_score_set_by_the_rules() -> None:
    backend = TableBackend(
        {"a": "🤔\ny\n🛑🛑\n4", "b": "🤔\ny\n🛑🛑\n7", "c": "no marker"}, math.log(0.99)
    )
    result = score_set(backend, ITEMS, ceiling=1000)
    longest = max(len(i.completion) + 1 for i in ITEMS)
    assert backend.budgets == [answer_budget([longest], ceiling=1000)]
    assert (result.total, result.correct, result.parse_failures) == (3, 1, 1)
    assert result.em == pytest.approx(1 / 3)
    assert result.ce == pytest.approx(-math.log(0.99))  # every golden token alike
    # Every output is scored without end-of-turn (confidence needs an answer after 🛑,
    # thinking tokens do not).
    own = [r for r in backend.scored if not r.end_of_turn]
    assert [r.completion for r in own] == ["🤔\ny\n🛑🛑\n4", "🤔\ny\n🛑🛑\n7", "no marker"]
    assert [a.confidence for a in result.answers] == [
        pytest.approx(0.99),
        pytest.approx(0.99),
        None,
    ]
    assert result.ece == pytest.approx(abs(0.5 - 0.99))
    assert result.pattern_heatmap() == {"arithmetic": {"1": 1.0, "2": 0.0}, "word": {"1": 0.0}}
    assert result.pattern_counts() == {"arithmetic": {"1": 1, "2": 1}, "word": {"1": 1}}
    assert (result.scorer, result.model) == ("table", "m")


def test_numeric_equivalence_and_an_explicit_budget() -> None:
    backend = TableBackend({"c": "🤔\nz\n🛑🛑\n1/2"}, 0.0)
    result = score_set(backend, ITEMS[2:], ceiling=1000, max_tokens=7)
    assert backend.budgets == [7] and result.correct == 1  # 1/2 == 0.5


def test_answers_from_two_model_versions_are_refused() -> None:
    class Swapped(TableBackend):
        def generate(self, prompts: Sequence[scorer.Messages], max_tokens: int) -> list[Generated]:
            return [Generated(g.text, "model-4") for g in super().generate(prompts, max_tokens)]

    backend = Swapped({"a": "🤔\ny\n🛑🛑\n4"}, 0.0, model="model-3")
    with pytest.raises(ModelChanged, match="model-3, model-4"):
        score_set(backend, ITEMS[:1], ceiling=100)


def test_answer_ce_counts_only_the_golden_answer_and_compares_modes() -> None:
    # Two references of the same answer, one with a long easy reasoning: CE per token of the
    # whole turn differs by the reasoning's length, answer CE does not.
    short = _item("a", "🤔\n(x)\n🛑🛑\n42", "42")
    verbose = _item("b", "🤔\n" + "easy words " * 20 + "\n🛑🛑\n42", "42")
    ce = {}
    answer_ce = {}
    for item in (short, verbose):
        backend = TableBackend({item.id: "🤔\n(x)\n🛑🛑\n42"}, math.log(0.9), answer_logprob=-2.0)
        result = score_set(backend, [item], ceiling=1000)
        ce[item.id], answer_ce[item.id] = result.ce, result.answer_ce
    assert answer_ce["a"] == pytest.approx(2.0) == answer_ce["b"]  # "4", "2": the answer only
    assert ce["a"] != pytest.approx(ce["b"])


def test_thinking_tokens_are_the_reasoning_before_the_first_stop() -> None:
    assert thinking_span("🤔🤔 \nabc\n🛑🛑\n4") == (4, 8)
    assert thinking_span("abc") == (0, 3)  # no 🛑: all of it
    assert thinking_span("🤔" * 10) == (4, 10)  # only the opening four are not thinking
    backend = TableBackend(
        {"a": "🤔\nabcd\n🛑🛑\n4", "b": "🤔🤔\nab🛑\n6", "c": "🤔\nno stop at all"}, 0.0
    )
    result = score_set(backend, ITEMS, ceiling=1000)
    # One token per character: "abcd\n" (5), "ab" (2), "no stop at all" (14).
    assert [a.thinking_tokens for a in result.answers] == [5, 2, 14]
    assert result.thinking_tokens == pytest.approx(21 / 3)
    assert result.parse_failures == 1  # the output with no 🛑 is still a parse failure
