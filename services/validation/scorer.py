"""The one scorer of fixed validation sets: EM, CE, confidence, ECE and the heatmap.

The trainer (in-process, `services.validation.inprocess`) and the node-worker (over the
node's HTTP API, `services.node.worker.evaluation.HttpBackend`) both score through `score_set`, so
one set scored on one model gives the same figures wherever it is scored:

- **Budget**: each answer may take `answer_budget(...)` tokens: the longest golden turn of
  the set (its tokens as `/v1/score` counts them, end-of-turn included) plus a margin, at
  most the caller's ceiling (R3_EVAL_MAX_TOKENS, the trainer's and the node's) or exactly
  an explicit `max_tokens`.
- **EM**: the greedy answer (no thinking-marker processors: the model's own output), judged
  by the codec (canonical forms, numeric equivalence, codes decoded with the default
  codebook); a parse failure counts as not correct and is counted.
- **CE**: token-weighted mean negative log-likelihood of the golden turns (teacher-forced,
  end-of-turn token included, as the training loss counts it).
- **Confidence / ECE**: `services.validation.calibration` over a teacher-forced score of the
  answer's own text; items with no answer after a 🛑 are left out of ECE.
- **Heatmap**: per domain × difficulty EM and count (`pattern_heatmap`, `pattern_counts`).

Torch-free: the node-worker imports it without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from codec.codebook import Codebook
from codec.domains import default_codebook
from codec.evaluate import EvalResult as Verdict
from codec.evaluate import Scoreboard, evaluate_output
from services.validation.calibration import (
    answer_confidence,
    answer_span,
    expected_calibration_error,
)

Messages = list[dict[str, str]]

BUDGET_MARGIN_TOKENS = 16  # beyond the longest golden turn: room for a longer reasoning
BUDGET_MARGIN_SHARE = 0.25  # and a quarter of it again


@dataclass(frozen=True)
class ScoreItem:
    """One prompt with its golden assistant turn, as both scorers see it."""

    id: str
    prompt: Messages  # the messages before the golden assistant turn
    completion: str  # the golden assistant turn (reasoning and answer), scored for CE
    golden: str  # the golden answer alone, compared canonically
    domain: str
    difficulty: int


@dataclass(frozen=True)
class Generated:
    text: str
    model: str  # the model version that produced it


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced log-probabilities of a completion's tokens."""

    model: str
    logprobs: list[float]
    offsets: list[tuple[int, int]]  # each token's [start, end) in the completion's characters


@dataclass(frozen=True)
class ScoreRequest:
    prompt: Messages
    completion: str
    end_of_turn: bool  # score the end-of-turn token after it too (golden turns: yes)


class ScoringBackend(Protocol):
    """A model the scorer can ask: greedy answers and teacher-forced token scores.

    `name` says who scores (`trainer`, `node:<name>`) and goes into `eval.result`'s `scorer`.
    Both calls answer in the order asked; a backend batches as it likes.
    """

    name: str

    def generate(self, prompts: Sequence[Messages], max_tokens: int) -> list[Generated]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]: ...


class ModelChanged(RuntimeError):
    """The model changed in the middle of an evaluation (a node hot swap)."""


@dataclass(frozen=True)
class ItemAnswer:
    """The model's answer to one item and how it was judged."""

    id: str
    domain: str
    difficulty: int
    answer: str  # the raw generated assistant text
    verdict: Verdict
    golden_logprobs: list[float]  # the golden turn's teacher-forced token logprobs (CE)
    # Probability the model gave its answer's own tokens; None when there is no answer after
    # a 🛑 (left out of ECE).
    confidence: float | None

    @property
    def match(self) -> bool:
        return self.verdict.match

    @property
    def parse_failed(self) -> bool:
        return self.verdict.parse_failed

    @property
    def predicted(self) -> str | None:
        return self.verdict.predicted


@dataclass
class SetScore:
    """One evaluation of one set on one model."""

    scorer: str
    model: str
    max_tokens: int  # the answer budget it ran under
    total: int
    correct: int
    parse_failures: int
    em: float
    ce: float | None
    ece: float | None
    board: Scoreboard
    answers: list[ItemAnswer] = field(default_factory=list)

    @property
    def heatmap(self) -> dict[str, Any]:
        """The status hash's heatmap (domains, difficulties, accuracy grid, cells with counts)."""
        return self.board.heatmap()

    def pattern_heatmap(self) -> dict[str, dict[str, float]]:
        """{domain: {difficulty: EM}}, as `eval.result` carries it."""
        grid: dict[str, dict[str, float]] = {}
        for (domain, level), cell in sorted(self.board.cells.items()):
            grid.setdefault(domain, {})[str(level)] = round(cell.accuracy, 4)
        return grid

    def pattern_counts(self) -> dict[str, dict[str, int]]:
        """{domain: {difficulty: answers}}: the n behind each heatmap cell."""
        grid: dict[str, dict[str, int]] = {}
        for (domain, level), cell in sorted(self.board.cells.items()):
            grid.setdefault(domain, {})[str(level)] = cell.total
        return grid


def answer_budget(golden_tokens: Sequence[int], *, ceiling: int) -> int:
    """Tokens an answer may take: the longest golden turn plus a margin, at most `ceiling`."""
    longest = max(golden_tokens, default=0)
    wanted = longest + max(BUDGET_MARGIN_TOKENS, round(longest * BUDGET_MARGIN_SHARE))
    return max(1, min(ceiling, wanted))


def mean_cross_entropy(logprobs: Sequence[Sequence[float]]) -> float | None:
    """Token-weighted mean negative log-likelihood (nats/token) over every scored token, as the
    trainer's loss is, so a long golden answer weighs more than a short one."""
    tokens = sum(len(lps) for lps in logprobs)
    if tokens == 0:
        return None
    return -sum(sum(lps) for lps in logprobs) / tokens


def score_set(
    backend: ScoringBackend,
    items: Sequence[ScoreItem],
    *,
    ceiling: int,
    max_tokens: int | None = None,
    codebook: Codebook | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SetScore:
    """Score `items` on `backend` by the module's rules.

    `max_tokens` given: every answer's budget, exactly; else `answer_budget(..., ceiling)`.
    Raises ModelChanged when the answers and scores came from more than one model version.
    """
    codebook = codebook if codebook is not None else default_codebook()
    golden = backend.score([ScoreRequest(i.prompt, i.completion, True) for i in items])
    budget = (
        max_tokens
        if max_tokens is not None
        else answer_budget([len(g.logprobs) for g in golden], ceiling=ceiling)
    )
    outputs = backend.generate([i.prompt for i in items], budget)
    verdicts = [
        evaluate_output(o.text, i.golden, codebook=codebook)
        for i, o in zip(items, outputs, strict=True)
    ]
    spans = [answer_span(o.text) for o in outputs]
    asked = [k for k, span in enumerate(spans) if span is not None]
    own = backend.score([ScoreRequest(items[k].prompt, outputs[k].text, False) for k in asked])
    confidences: list[float | None] = [None] * len(items)
    for k, scored in zip(asked, own, strict=True):
        span = spans[k]
        assert span is not None
        confidences[k] = answer_confidence(scored.offsets, scored.logprobs, span)
    models = {g.model for g in golden} | {o.model for o in outputs} | {s.model for s in own}
    if len(models) > 1:
        raise ModelChanged(f"answers came from several model versions: {', '.join(sorted(models))}")
    answers = [
        ItemAnswer(
            id=item.id,
            domain=item.domain,
            difficulty=item.difficulty,
            answer=out.text,
            verdict=verdict,
            golden_logprobs=list(gold.logprobs),
            confidence=conf,
        )
        for item, out, verdict, gold, conf in zip(
            items, outputs, verdicts, golden, confidences, strict=True
        )
    ]
    if on_progress is not None:
        on_progress(len(items), len(items))
    return summarize(answers, scorer=backend.name, model=next(iter(models), ""), max_tokens=budget)


def summarize(
    answers: Sequence[ItemAnswer], *, scorer: str, model: str, max_tokens: int
) -> SetScore:
    """The figures of a run: EM over every item (a parse failure counts as not correct), CE
    over the golden turns' tokens, ECE over the items whose output had an answer."""
    board = Scoreboard()
    for a in answers:
        board.add(a.domain, a.difficulty, a.verdict)
    total = board.total()
    calibrated = [a for a in answers if a.confidence is not None]
    return SetScore(
        scorer=scorer,
        model=model,
        max_tokens=max_tokens,
        total=total.total,
        correct=total.correct,
        parse_failures=total.parse_failed,
        em=total.correct / total.total if total.total else 0.0,
        ce=mean_cross_entropy([a.golden_logprobs for a in answers]),
        ece=expected_calibration_error(
            [a.confidence for a in calibrated if a.confidence is not None],
            [a.match for a in calibrated],
        ),
        board=board,
        answers=list(answers),
    )
