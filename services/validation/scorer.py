"""The one scorer of fixed validation sets: EM, CE, confidence, ECE and the heatmap.

The trainer (in-process, `services.validation.inprocess`) and the node-worker (over the
node's HTTP API, `services.node.worker.evaluation.HttpBackend`) both score through `score_set`, so
one set scored on one model gives the same figures wherever it is scored:

- **Budget**: each answer may take `answer_budget(...)` tokens: the longest golden turn of
  the set (its tokens as `/v1/score` counts them, end-of-turn included) plus a margin, at
  most the caller's ceiling (R3_EVAL_MAX_TOKENS, the trainer's and the node's), or exactly
  an explicit `max_tokens`. The ceiling never cuts below the longest golden turn plus
  BUDGET_MARGIN_TOKENS: a budget shorter than the references scores every answer of a
  verbose mode as "no 🛑 marker" (English syllogism needs ~130 tokens; a ceiling of 96
  zeroed every English checkpoint, issue 16). When it would, the budget is raised to that
  floor and a warning says so; `max_tokens` in the result says what was used.
- **EM**: the greedy answer (no thinking-marker processors: the model's own output), judged
  by the codec (canonical forms, numeric equivalence, codes decoded with the default
  codebook); a parse failure counts as not correct and is counted.
- **CE**: token-weighted mean negative log-likelihood of the golden turns (teacher-forced,
  end-of-turn token included, as the training loss counts it). Per token of the set's own
  reference, so it cannot compare modes: an English reference is ~5x the tokens of a
  canonical one, mostly easy words.
- **Answer CE**: the same, over the golden ANSWER's tokens only (the text after the last 🛑
  of the golden turn, stripped; a token counts when its characters overlap it, as for
  confidence). The answer is the same text in every mode, so this compares modes.
- **Thinking tokens**: mean tokens of the model's own reasoning per answer, from the
  teacher-forced score of its output: the tokens before its first 🛑, after the opening 🤔
  markers (the same in every mode). An output with no 🛑 counts all its tokens (after the
  opening markers): it spent the whole budget thinking.
- **Confidence / ECE**: `services.validation.calibration` over a teacher-forced score of the
  answer's own text; items with no answer after a 🛑 are left out of ECE.
- **Heatmap**: per domain × difficulty EM and count (`pattern_heatmap`, `pattern_counts`).

Torch-free: the node-worker imports it without loading a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from codec.codebook import Codebook
from codec.domains import default_codebook
from codec.evaluate import EvalResult as Verdict
from codec.evaluate import Scoreboard, evaluate_output
from codec.problem import STOP, THINK, RenderSettings
from services.validation.calibration import (
    answer_confidence,
    answer_span,
    expected_calibration_error,
)

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]

BUDGET_MARGIN_TOKENS = 16  # beyond the longest golden turn: room for a longer reasoning
BUDGET_MARGIN_SHARE = 0.25  # and a quarter of it again
# The 🤔 that open every reference (codec.problem.RenderSettings.think_repeat): the same in
# every mode, so not part of the thinking a mode costs.
OPENING_MARKERS = RenderSettings().think_repeat


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
    # The golden answer's token logprobs (answer CE; empty when the golden turn has no answer
    # after a 🛑) and the model's reasoning tokens (before its first 🛑).
    answer_logprobs: list[float] = field(default_factory=list)
    thinking_tokens: int = 0

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
    ce: float | None  # per token of this set's own references: not comparable across modes
    ece: float | None
    board: Scoreboard
    answers: list[ItemAnswer] = field(default_factory=list)
    answer_ce: float | None = None  # per token of the golden answers: comparable across modes
    thinking_tokens: float | None = None  # mean reasoning tokens of the model's own outputs

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


def budget_floor(golden_tokens: Sequence[int]) -> int:
    """The fewest tokens an answer may take: the longest golden turn plus BUDGET_MARGIN_TOKENS."""
    return max(golden_tokens, default=0) + BUDGET_MARGIN_TOKENS


def answer_budget(golden_tokens: Sequence[int], *, ceiling: int) -> int:
    """Tokens an answer may take: the longest golden turn plus a margin, at most `ceiling`,
    but never below `budget_floor` (a ceiling under the references would zero the set)."""
    longest = max(golden_tokens, default=0)
    wanted = longest + max(BUDGET_MARGIN_TOKENS, round(longest * BUDGET_MARGIN_SHARE))
    return max(1, budget_floor(golden_tokens), min(ceiling, wanted))


def thinking_span(raw: str, opening: int = OPENING_MARKERS) -> tuple[int, int]:
    """Character range of an output's reasoning: after its opening 🤔 markers (at most
    `opening` of them, and the whitespace after them), up to its first 🛑, or to its end when
    it has no 🛑. An output of nothing but 🤔 spent its budget on them: they count."""
    stripped = raw.lstrip()
    for _ in range(opening):
        if not stripped.startswith(THINK):
            break
        stripped = stripped[len(THINK) :].lstrip()
    start = len(raw) - len(stripped)
    stop = raw.find(STOP, start)
    return start, len(raw) if stop < 0 else stop


def tokens_in(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens whose characters overlap `span` (a token glued across its edge
    counts, as for confidence)."""
    lo, hi = span
    return [k for k, (start, end) in enumerate(offsets) if start < hi and end > lo]


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
    lengths = [len(g.logprobs) for g in golden]
    budget = max_tokens if max_tokens is not None else answer_budget(lengths, ceiling=ceiling)
    if max_tokens is None and ceiling < budget_floor(lengths):
        log.warning(
            "answer budget raised from the ceiling of %d to %d tokens: the set's longest "
            "reference takes %d (a lower budget would cut every such answer before its 🛑); "
            "raise R3_EVAL_MAX_TOKENS to at least %d to silence this",
            ceiling,
            budget,
            max(lengths, default=0),
            budget,
        )
    outputs = backend.generate([i.prompt for i in items], budget)
    verdicts = [
        evaluate_output(o.text, i.golden, codebook=codebook)
        for i, o in zip(items, outputs, strict=True)
    ]
    spans = [answer_span(o.text) for o in outputs]
    # Every non-empty output is scored: its answer's confidence and its reasoning's tokens.
    asked = [k for k, o in enumerate(outputs) if o.text]
    own = backend.score([ScoreRequest(items[k].prompt, outputs[k].text, False) for k in asked])
    confidences: list[float | None] = [None] * len(items)
    thinking = [0] * len(items)
    for k, scored in zip(asked, own, strict=True):
        span = spans[k]
        if span is not None:
            confidences[k] = answer_confidence(scored.offsets, scored.logprobs, span)
        thinking[k] = len(tokens_in(scored.offsets, thinking_span(outputs[k].text)))
    answer_lps = [
        _answer_logprobs(item.completion, gold) for item, gold in zip(items, golden, strict=True)
    ]
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
            answer_logprobs=answer,
            thinking_tokens=spent,
        )
        for item, out, verdict, gold, conf, answer, spent in zip(
            items, outputs, verdicts, golden, confidences, answer_lps, thinking, strict=True
        )
    ]
    if on_progress is not None:
        on_progress(len(items), len(items))
    return summarize(answers, scorer=backend.name, model=next(iter(models), ""), max_tokens=budget)


def _answer_logprobs(completion: str, gold: TokenScores) -> list[float]:
    span = answer_span(completion)
    if span is None:
        return []
    return [gold.logprobs[k] for k in tokens_in(gold.offsets, span)]


def summarize(
    answers: Sequence[ItemAnswer], *, scorer: str, model: str, max_tokens: int
) -> SetScore:
    """The figures of a run: EM over every item (a parse failure counts as not correct), CE
    over the golden turns' tokens, answer CE over the golden answers' tokens, thinking tokens
    per item, ECE over the items whose output had an answer."""
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
        answer_ce=mean_cross_entropy([a.answer_logprobs for a in answers]),
        thinking_tokens=(
            sum(a.thinking_tokens for a in answers) / len(answers) if answers else None
        ),
    )
