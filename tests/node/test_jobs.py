"""Eval and generation jobs end to end: real node, real Redis, a real worker, a real gateway."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import keys, queues
from bus.encoding import from_fields
from bus.events import EvalResult, JobFailed, JobFinished, JobProgress
from bus.status import StatusStore
from codec.evaluate import evaluate_output
from services.node.config import get_node_settings
from services.node.pulling.registry import Registry
from services.node.worker.evaluation import (
    answer_confidence,
    answer_span,
    expected_calibration_error,
)
from services.node.worker.node_client import NodeClient
from services.node.worker.runner import build_worker
from tests.node import jobs_fixtures
from tests.node.jobs_fixtures import MAX_TOKENS, MEMORIZED, memorized_set
from tests.rig.node import RunningNode

# Shared fixtures, bound here so pytest finds them in this module.
jobs_env = jobs_fixtures.jobs_env
gateway_url = jobs_fixtures.gateway_url
memorized_dir = jobs_fixtures.memorized_dir


def events(r: redis.Redis, stream: str) -> list[Any]:
    return [from_fields(raw) for _id, raw in r.xrange(stream)]


def run_worker(r: redis.Redis) -> None:
    build_worker(r).work(burst=True)


@pytest.mark.slow
def test_evaluate_publishes_eval_result_with_numbers_that_recompute(
    memorized_dir: Path,
    node_factory: Callable[..., RunningNode],
    r: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Registry(r, "test-node").register("memorized-7", path=str(memorized_dir), step=7)
    Registry(r, "test-node").set_active("memorized-7")
    node = node_factory()
    monkeypatch.setenv("R3_NODE_URL", node.url)
    monkeypatch.setenv("R3_EVAL_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_NODE_NAME", node.state.node_name)  # the registry it reads the step from
    get_node_settings.cache_clear()
    StatusStore(r).update(streaming_ce=0.25)
    path = memorized_set(tmp_path / "tiny.jsonl")
    job = queues.enqueue(
        r, queues.NODE_EVALUATE, kind="node", priority="high", kwargs={"eval_set": str(path)}
    )
    run_worker(r)
    job.refresh()
    assert job.get_status() == "finished", job.exc_info
    [result] = events(r, keys.STREAM_EVAL)
    assert isinstance(result, EvalResult)
    assert (result.model_id, result.eval_set, result.step) == ("memorized-7", str(path), 7)
    assert (result.total, result.correct, result.parse_failures) == (3, 2, 0)
    assert result.fixed_eval_em == pytest.approx(2 / 3)
    assert result.pattern_heatmap == {"arithmetic": {"1": 1.0, "2": 0.0}}
    # CE and ECE recomputed from the node's teacher-forced scores of the same texts.
    returned = job.return_value()
    outputs = {s["id"]: s["output"] for s in returned["samples"]}
    assert outputs["t2"].endswith("\n3")  # the memorized answer, judged wrong against 2
    confs, nll, tokens = [], 0.0, 0
    with NodeClient(node.url) as client:
        for i, (question, turn, _golden) in enumerate(MEMORIZED):
            prompt = [{"role": "user", "content": question}]
            scored = client.score(prompt, turn)
            nll -= sum(scored.logprobs)
            tokens += len(scored.logprobs)
            out = outputs[f"t{i}"]
            span = answer_span(out)
            assert span is not None
            confs.append(answer_confidence(client.score(prompt, out, end_of_turn=False), span))
    assert result.fixed_eval_ce == pytest.approx(nll / tokens, rel=1e-6)
    assert result.val_train_gap == pytest.approx(nll / tokens - 0.25, rel=1e-6)
    assert result.fixed_eval_ece == pytest.approx(
        expected_calibration_error(confs, [True, True, False]), abs=1e-9
    )
    if min(confs) >= 0.9:  # one bin: the hand formula
        assert result.fixed_eval_ece == pytest.approx(abs(2 / 3 - sum(confs) / 3), abs=1e-9)
    assert math.isclose(returned["fixed_eval_em"], result.fixed_eval_em)
    finished = [e for e in events(r, keys.STREAM_JOBS) if isinstance(e, JobFinished)]
    assert [e.job_id for e in finished] == [job.id] and finished[0].queue == "node-high"


def test_evaluate_refuses_a_model_the_node_does_not_serve(
    jobs_env: RunningNode, r: redis.Redis
) -> None:
    job = queues.enqueue(
        r,
        queues.NODE_EVALUATE,
        kind="node",
        kwargs={"eval_set": "arithmetic:1", "model": "not-served", "limit": 2},
    )
    run_worker(r)
    job.refresh()
    assert job.get_status() == "failed"
    [failed] = [e for e in events(r, keys.STREAM_JOBS) if isinstance(e, JobFailed)]
    assert "not-served" in failed.reason and "set_active" in failed.reason
    assert events(r, keys.STREAM_EVAL) == []


def test_generate_uploads_a_shard_that_lands_queued_on_train_low(
    jobs_env: RunningNode, gateway_url: str, r: redis.Redis
) -> None:
    job = queues.enqueue(
        r,
        queues.NODE_GENERATE,
        kind="node",
        priority="low",
        kwargs={
            "domain": "arithmetic",
            "count": 6,
            "difficulty": 2,
            "mode": "canonical",
            "seed": 5,
        },
    )
    run_worker(r)
    job.refresh()
    assert job.get_status() == "finished", job.exc_info
    report = job.return_value()
    assert report["problems"] == 6 and sum(report["attempts"].values()) == 6
    assert report["lines"] == sum(report["sources"].values()) == 6  # fallback=golden keeps all
    assert report["models"] == [jobs_env.state.engine.active.version]
    shard = Path(report["path"])
    upload = report["upload"]
    assert upload["queue"] == "train-low" and upload["lines"] == 6
    # The gateway queued it: one training job on train-low, reading the stored copy.
    assert queues.depths(r)["train-low"] == 1
    [train_job] = queues.queues(r, "train")[2].get_jobs()
    assert train_job.id == upload["job_id"] and train_job.func_name == queues.TRAIN_FILE
    assert Path(train_job.kwargs["path"]).read_bytes() == shard.read_bytes()
    lines = [json.loads(x) for x in shard.read_text().splitlines()]
    for line in lines:
        meta = line["meta"]
        assert evaluate_output(line["messages"][1]["content"], meta["golden"]).match
        assert meta["source"] in ("model", "selfcorrect", "golden")
    progress = [e for e in events(r, keys.STREAM_JOBS) if isinstance(e, JobProgress)]
    assert progress and progress[-1].done == progress[-1].total == 6
    # Verified examples per minute, in the result and in the progress message.
    assert report["verified"] == report["attempts"].get("correct", 0)
    rate = 60 * report["verified"] / report["seconds"]
    assert report["verified_per_minute"] == pytest.approx(rate, abs=0.5)
    assert progress[-1].message is not None and "verified" in progress[-1].message


def test_generate_without_a_gateway_fails_and_keeps_the_shard(
    jobs_env: RunningNode, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("R3_GATEWAY_URL", "http://127.0.0.1:9")  # nothing listens there
    get_node_settings.cache_clear()
    job = queues.enqueue(
        r,
        queues.NODE_GENERATE,
        kind="node",
        kwargs={"domain": "word", "count": 2, "seed": 1, "name": "kept"},
    )
    run_worker(r)
    job.refresh()
    assert job.get_status() == "failed"
    [failed] = [e for e in events(r, keys.STREAM_JOBS) if isinstance(e, JobFailed)]
    assert "R3_GATEWAY_URL" in failed.reason
    assert (get_node_settings().generated_dir / "kept.jsonl").is_file()


@pytest.mark.slow
def test_a_swap_during_evaluation_restarts_it_on_the_new_model(
    memorized_dir: Path,
    jobs_env: RunningNode,
    r: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.node.pulling.activation import activate
    from services.node.worker import evaluation, jobs

    node = jobs_env
    before = node.state.engine.active.version
    node.state.registry.register("memorized-7", path=str(memorized_dir), step=7)
    monkeypatch.setenv("R3_JOBS_CONCURRENCY", "1")  # items in order: the swap lands mid-run
    get_node_settings.cache_clear()
    real = evaluation.HttpBackend.score
    calls: list[int] = []

    def score_then_swap(backend: Any, requests: Any) -> Any:
        scored = real(backend, requests)
        calls.append(len(requests))
        if len(calls) == 1:  # a real activation, as the checkpoint watcher would do
            activate(node.state, "memorized-7", by="auto")
        return scored

    monkeypatch.setattr(evaluation.HttpBackend, "score", score_then_swap)
    result = jobs.evaluate(eval_set=str(memorized_set(tmp_path / "tiny.jsonl")))
    # The golden turns scored on the old model, answers from the new: the whole set again
    # (golden turns, then the three answers' own confidence).
    assert calls == [3, 3, 3, 3]
    assert (result["model_id"], result["step"]) == ("memorized-7", 7) and before != "memorized-7"
    assert (result["total"], result["correct"]) == (3, 2)
    [published] = events(r, keys.STREAM_EVAL)
    assert published.model_id == "memorized-7"
