"""The trainer's and the node's scores of one model on one set agree: one scorer, two backends.

The trainer scores in-process (`services.validation.scoring.score`, what FixedEvaluator runs);
the node-worker over a real node's HTTP API (`services.node.worker.evaluation.evaluate_items`, what
the eval job runs). Same model, same set, both on CPU: EM and every verdict exactly, CE and
ECE to float tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from services.model.loading import load_model_and_tokenizer
from services.node.pulling.registry import Registry
from services.node.worker import evaluation
from services.node.worker.evaluation import EvalReport
from services.node.worker.node_client import NodeClient
from services.validation.scorer import SetScore
from services.validation.scoring import score
from services.validation.sets import ensure_set, load_set
from tests.node import jobs_fixtures
from tests.node.jobs_fixtures import MEMORIZED
from tests.rig.node import RunningNode
from tests.rig.threads import torch_threads

memorized_dir = jobs_fixtures.memorized_dir  # bound here so pytest finds it

CEILING = 48  # the budget's ceiling on both sides, R3_EVAL_MAX_TOKENS on both


def _stored_memorized(path: Path) -> Path:
    """MEMORIZED as a stored validation set (the trainer's format, meta.mode included)."""
    with path.open("w", encoding="utf-8") as handle:
        for i, (question, turn, golden) in enumerate(MEMORIZED):
            line = {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": turn},
                ],
                "meta": {
                    "id": f"t{i}",
                    "golden": golden,
                    "domain": "arithmetic",
                    "difficulty": 1 + i // 2,
                    "mode": "english",
                },
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def _both(model_dir: Path, node: RunningNode, path: Path) -> tuple[SetScore, EvalReport]:
    with torch_threads(1):
        model, tokenizer = load_model_and_tokenizer(model_dir)
        trainer = score(model, tokenizer, load_set(path), max_new_tokens=CEILING)
        with NodeClient(node.url) as client:
            report = evaluation.evaluate_items(
                client,
                evaluation.items_from_jsonl(path),
                eval_set=path.stem,
                max_tokens=CEILING,
                concurrency=4,
                node_name=node.state.node_name,
            )
    return trainer, report


def _agree(trainer: object, report: object) -> None:
    from services.validation.scorer import SetScore

    assert isinstance(trainer, SetScore) and isinstance(report, evaluation.EvalReport)
    node = report.event
    assert (
        node.scorer is not None and node.scorer.startswith("node:") and trainer.scorer == "trainer"
    )
    assert node.max_tokens == trainer.max_tokens  # one budget rule
    assert [s["output"] for s in report.samples] == [a.answer for a in trainer.answers][:5]
    assert (node.total, node.correct, node.parse_failures) == (
        trainer.total,
        trainer.correct,
        trainer.parse_failures,
    )
    assert node.fixed_eval_em == trainer.em
    assert node.pattern_heatmap == trainer.pattern_heatmap()
    assert node.pattern_counts == trainer.pattern_counts()
    assert trainer.ce is not None and node.fixed_eval_ce == pytest.approx(trainer.ce, rel=1e-4)
    if trainer.ece is None:
        assert node.fixed_eval_ece is None
    else:
        assert node.fixed_eval_ece == pytest.approx(trainer.ece, abs=1e-4)


@pytest.mark.slow
def test_trainer_and_node_agree_on_a_model_that_answers(
    memorized_dir: Path,
    node_factory: Callable[..., RunningNode],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    Registry(r, "test-node").register("memorized-7", path=str(memorized_dir), step=7)
    Registry(r, "test-node").set_active("memorized-7")
    node = node_factory()
    trainer, report = _both(memorized_dir, node, _stored_memorized(tmp_path / "memorized.jsonl"))
    _agree(trainer, report)
    # A set with right and wrong answers and confidences: the agreement is not 0 == 0.
    assert report.event.correct == 2 and report.event.fixed_eval_ece is not None


def test_trainer_and_node_agree_on_a_stored_validation_set(
    embedded_dir: Path, node: RunningNode, tmp_path: Path
) -> None:
    path = ensure_set(tmp_path / "validation", "syllogism", 1, "canonical", size=4)
    trainer, report = _both(embedded_dir, node, path)
    _agree(trainer, report)
