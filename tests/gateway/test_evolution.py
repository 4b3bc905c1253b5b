"""GET /api/evolution: the probe answers the trainer recorded, per evaluation, oldest first."""

from __future__ import annotations

import httpx
import redis

from services.validation.evolution import ProbeAnswer, record_probes
from tests.gateway.rig import Gateway


def _record(r: redis.Redis, step: int, answer: str, checkpoint: str | None) -> None:
    record_probes(
        r,
        eval_set="syllogism-d1-canonical",
        step=step,
        model_id=checkpoint or f"step-{step}",
        checkpoint_id=checkpoint,
        time=f"2026-11-24T03:00:{step:02d}Z",
        answers=[
            ProbeAnswer(
                id="p1",
                question="All A are B. All B are C. Are all A C?",
                golden="valid",
                answer=answer,
                match=answer == "valid",
                parse_failed=answer == "",
            )
        ],
    )


def test_probe_history_over_checkpoints(gateway: Gateway, r: redis.Redis) -> None:
    _record(r, 10, "", None)
    _record(r, 20, "invalid", "step-00000020")
    _record(r, 30, "valid", "step-00000030")
    body = httpx.get(gateway.url + "/api/evolution", timeout=10).json()
    assert [e["step"] for e in body["evaluations"]] == [10, 20, 30]
    (probe,) = body["probes"]
    history = [(h["step"], h["answer"], h["match"], h["parse_failed"]) for h in probe["history"]]
    assert history == [
        (10, "", False, True),
        (20, "invalid", False, False),
        (30, "valid", True, False),
    ]
    only = httpx.get(
        gateway.url + "/api/evolution", params={"checkpoints_only": "true"}, timeout=10
    ).json()
    assert [e["checkpoint_id"] for e in only["evaluations"]] == ["step-00000020", "step-00000030"]
    other = httpx.get(gateway.url + "/api/evolution", params={"eval_set": "word-d1-english"}).json()
    assert other["evaluations"] == [] and other["probes"] == []
    assert httpx.get(gateway.url + "/api/evolution", params={"limit": 0}).status_code in (400, 422)
