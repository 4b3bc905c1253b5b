"""The one scorer's rules on a small honest backend: budget, EM, CE, confidence, ECE, counts."""

from __future__ import annotations

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
)


class TableBackend:
    """Answers and scores from tables: one token per character, each with a fixed logprob."""

    name = "table"

    def __init__(self, answers: dict[str, str], logprob: float, model: str = "m") -> None:
        self.answers = answers
        self.logprob = logprob
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
            out.append(TokenScores(self.model, [self.logprob] * n, offsets))
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
    assert answer_budget([100], ceiling=64) == 64
    assert answer_budget([], ceiling=64) == 16


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
    # Only answers with an answer after 🛑 are scored for confidence, without end-of-turn.
    own = [r for r in backend.scored if not r.end_of_turn]
    assert [r.completion for r in own] == ["🤔\ny\n🛑🛑\n4", "🤔\ny\n🛑🛑\n7"]
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
