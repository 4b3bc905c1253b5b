"""The trainer's fixed evaluation: score the stored validation sets on the model in training.

Every R3_EVAL_STEPS steps and at every checkpoint, by the one scorer's rules
(services.validation.scorer, the node's eval job uses them too): exact match, teacher-forced CE
of the reference turns (per token of the set's own reference: it cannot compare modes),
answer CE (the golden answers' tokens only: it can), the model's thinking tokens per answer,
ECE of the answers' probabilities, the pattern heatmap; here also the val−train gap and the
EM trend. Codes are decoded with the run's codebook (`Trainer.codebook`, read at each
evaluation: a run gains its codes with its first encoded file), else the default codebook.
The figures go to the status hash (TrainingStatus's
`fixed_eval_*`, `validation_loss`, `val_train_gap`, `pattern_heatmap`), one `eval.result`
event per set, and the probes' answers to the evolution stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bus.events import EvalResult
from bus.publish import Publisher
from bus.status import StatusStore
from codec.codebook import Codebook
from codec.domains import default_codebook
from codec.evaluate import Scoreboard
from services.trainer.tokenize import ChatTokenizer
from services.validation.evolution import ProbeAnswer, record_probes
from services.validation.scoring import FixedEvalScore, score
from services.validation.sets import SetSpec, ValidationItem, ensure_set, load_set, parse_sets
from services.validation.trend import Trend, em_trend

log = logging.getLogger(__name__)
TRAINER_SCORER = "trainer"  # eval.result's `scorer` (the node's say node:<name>)


@dataclass
class _LoadedSet:
    spec: SetSpec
    items: list[ValidationItem]
    history: list[float]


@dataclass(frozen=True)
class FixedEvalOutcome:
    """All sets of one evaluation, combined (item-weighted) for the status hash."""

    step: int
    em: float
    ce: float | None
    ece: float | None
    trend: Trend | None
    val_train_gap: float | None
    per_set: dict[str, FixedEvalScore]


class FixedEvaluator:
    """Loads (or draws once) the configured sets and scores them on demand."""

    def __init__(
        self,
        connection: redis.Redis,
        tokenizer: PreTrainedTokenizerBase,
        chat: ChatTokenizer,
        *,
        sets: str,
        root: Path,
        size: int,
        max_new_tokens: int,
        probe_count: int,
        publisher: Publisher | None = None,
        codebook: Callable[[], Codebook | None] | None = None,
        current_tokenizer: Callable[[], PreTrainedTokenizerBase] | None = None,
    ) -> None:
        self.connection = connection
        self.tokenizer = tokenizer
        # The run's codebook and tokenizer as they are at each evaluation (a run extends its
        # tokenizer with codes when it meets its first encoded file); None: the default.
        self._codebook = codebook or (lambda: None)
        self._tokenizer = current_tokenizer or (lambda: self.tokenizer)
        self.publisher = publisher or Publisher(connection)
        self.status = StatusStore(connection)
        self.max_new_tokens = max_new_tokens
        self.probe_count = probe_count
        self.sets: list[_LoadedSet] = []
        for spec in parse_sets(sets):
            items = load_set(ensure_set(root, spec.domain, spec.difficulty, spec.mode, size))
            for item in items:
                # The scorer scores what the trainer trains on: a reference that training
                # would reject (special-token text, a template that rewrites it) fails here.
                chat.encode(list(item.messages))
            self.sets.append(_LoadedSet(spec, items, []))
        self.last: FixedEvalOutcome | None = None

    @classmethod
    def for_trainer(cls, trainer: Any, connection: redis.Redis) -> FixedEvaluator:
        """The evaluator a Trainer's settings describe (R3_FIXED_EVAL_*, R3_EVAL_EXAMPLES)."""
        loop = trainer.loop
        return cls(
            connection,
            trainer.tokenizer,
            trainer.chat,
            sets=loop.fixed_eval_sets,
            root=loop.validation_dir or trainer.ckpt_settings.layout.validation,
            size=trainer.settings.eval_examples,
            max_new_tokens=loop.eval_max_tokens,
            probe_count=loop.probe_count,
            publisher=trainer.publisher,
            codebook=lambda: getattr(trainer, "codebook", None),
            current_tokenizer=lambda: trainer.tokenizer,
        )

    def codebook(self) -> Codebook:
        """The codebook answers are decoded with now: the run's, else the default."""
        return self._codebook() or default_codebook()

    def codebook_version(self) -> str | None:
        """eval.result's `codebook`: the run's codebook version, None for the default."""
        run = self._codebook()
        return None if run is None else getattr(run, "version", None)

    def prompts(self) -> list[tuple[str, str]]:
        """(question, golden answer) of every item, for the in-loop sample."""
        return [(item.question, item.golden) for s in self.sets for item in s.items]

    def evaluate(
        self,
        model: PreTrainedModel,
        *,
        step: int,
        train_loss: float | None,
        checkpoint_id: str | None = None,
    ) -> FixedEvalOutcome | None:
        """Score every set on `model` (once per step: a second call at the same step returns
        the first result, publishing the checkpoint's records only)."""
        if not self.sets:
            return None
        if self.last is not None and self.last.step == step:
            if checkpoint_id is not None:
                self._publish(self.last, checkpoint_id=checkpoint_id, train_loss=train_loss)
            return self.last
        per_set: dict[str, FixedEvalScore] = {}
        codebook = self.codebook()
        tokenizer = self._tokenizer()
        # A stored coded set is written in the codebook it was drawn with (the built-in one);
        # a run with its own codebook is scored against the same references in its codes.
        known = (default_codebook(), codebook)
        for loaded in self.sets:
            per_set[loaded.spec.name] = score(
                model,
                tokenizer,
                [item.in_codebook(codebook, known) for item in loaded.items],
                max_new_tokens=self.max_new_tokens,
                codebook=codebook,
                model_id=checkpoint_id or f"step-{step}",
            )
        outcome = self._combine(step, per_set, train_loss)
        for loaded in self.sets:
            loaded.history.append(per_set[loaded.spec.name].em)
        self.last = outcome
        self._publish(outcome, checkpoint_id=checkpoint_id, train_loss=train_loss)
        return outcome

    def _combine(
        self, step: int, per_set: dict[str, FixedEvalScore], train_loss: float | None
    ) -> FixedEvalOutcome:
        total = sum(s.total for s in per_set.values()) or 1
        em = sum(s.correct for s in per_set.values()) / total
        ces = [(s.ce, s.total) for s in per_set.values() if s.ce is not None]
        ce = sum(c * n for c, n in ces) / sum(n for _, n in ces) if ces else None
        eces = [(s.ece, s.total) for s in per_set.values() if s.ece is not None]
        ece = sum(e * n for e, n in eces) / sum(n for _, n in eces) if eces else None
        history = self._combined_history()  # the earlier rounds: this one is not in it yet
        return FixedEvalOutcome(
            step=step,
            em=em,
            ce=ce,
            ece=ece,
            trend=em_trend(history, em),
            val_train_gap=ce - train_loss if ce is not None and train_loss is not None else None,
            per_set=per_set,
        )

    def _combined_history(self) -> list[float]:
        # Item-weighted EM of each earlier evaluation, rebuilt from the per-set histories.
        rounds = min((len(s.history) for s in self.sets), default=0)
        weights = [len(s.items) for s in self.sets]
        return [
            sum(s.history[i] * w for s, w in zip(self.sets, weights, strict=True)) / sum(weights)
            for i in range(rounds)
        ]

    def _publish(
        self, outcome: FixedEvalOutcome, *, checkpoint_id: str | None, train_loss: float | None
    ) -> None:
        model_id = checkpoint_id or f"step-{outcome.step}"
        board = Scoreboard()
        for name, result in outcome.per_set.items():
            loaded = next(s for s in self.sets if s.spec.name == name)
            for answer in result.answers:
                board.add(answer.domain, answer.difficulty, answer.verdict)
            self.publisher.publish(
                EvalResult(
                    model_id=model_id,
                    eval_set=name,
                    scorer=TRAINER_SCORER,
                    max_tokens=result.max_tokens,
                    step=outcome.step,
                    total=result.total,
                    correct=result.correct,
                    parse_failures=result.parse_failures,
                    fixed_eval_em=result.em,
                    fixed_eval_ce=result.ce,
                    fixed_eval_ece=result.ece,
                    val_train_gap=(
                        result.ce - train_loss
                        if result.ce is not None and train_loss is not None
                        else None
                    ),
                    fixed_eval_trend=em_trend(loaded.history[:-1], result.em),
                    pattern_heatmap=result.pattern_heatmap(),
                    pattern_counts=result.pattern_counts(),
                    answer_ce=result.answer_ce,
                    thinking_tokens=result.thinking_tokens,
                    codebook=self.codebook_version(),
                )
            )
            if self.probe_count:
                record_probes(
                    self.connection,
                    eval_set=name,
                    step=outcome.step,
                    model_id=model_id,
                    checkpoint_id=checkpoint_id,
                    time=datetime.now(UTC).isoformat(),
                    answers=_probe_answers(loaded.items, result, self.probe_count),
                )
        self.status.update(
            fixed_eval_em=round(outcome.em, 4),
            fixed_eval_ce=None if outcome.ce is None else round(outcome.ce, 4),
            fixed_eval_ece=None if outcome.ece is None else round(outcome.ece, 4),
            fixed_eval_trend=outcome.trend,
            validation_loss=None if outcome.ce is None else round(outcome.ce, 4),
            val_train_gap=None
            if outcome.val_train_gap is None
            else round(outcome.val_train_gap, 4),
            pattern_heatmap=board.heatmap(),
        )


def _probe_answers(
    items: Sequence[ValidationItem], result: FixedEvalScore, count: int
) -> list[ProbeAnswer]:
    return [
        ProbeAnswer(
            id=item.id,
            question=item.question,
            golden=item.golden,
            answer=answer.answer,
            match=answer.match,
            parse_failed=answer.parse_failed,
        )
        for item, answer in list(zip(items, result.answers, strict=True))[:count]
    ]
