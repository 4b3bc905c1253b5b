"""GET /api/studies and /api/studies/{id} on a real gateway, and the study stream over /events."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import redis

from bus import keys
from bus.events import Alert, StudyProgress, StudyReport
from bus.publish import Publisher
from services.gateway import cursor, sse
from services.study import report as study_report
from services.study.plan import StudyPlan
from services.study.report import RunResult
from tests.gateway.rig import Gateway, SseReader

TIMEOUT = httpx.Timeout(10.0)


def store(r: redis.Redis, study_id: str, started: float, **report: object) -> dict[str, object]:
    body: dict[str, object] = {
        "study_id": study_id,
        "domain": "syllogism",
        "difficulty": 1,
        "modes": ["english", "canonical"],
        "seeds": [1, 2],
        "steps": 400,
        "table": [{"mode": "english", "em": 0.94}, {"mode": "canonical", "em": 0.99}],
        "curves": {"english": {"1": [{"step": 40, "em": 0.1}]}},
    } | report
    r.set(keys.study_key(study_id), json.dumps(body))
    r.zadd(keys.STUDIES, {study_id: started})
    return body


def test_no_study_is_an_empty_list(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/api/studies", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"studies": [], "total": 0}


def test_studies_are_listed_newest_first_with_their_summary(
    gateway: Gateway, r: redis.Redis
) -> None:
    store(r, "study-old", 1_700_000_000.0, domain="arithmetic", difficulty=2)
    newest = store(r, "study-new", 1_700_000_500.0)
    r.zadd(keys.STUDIES, {"study-running": 1_700_000_900.0})  # no report yet
    body = httpx.get(gateway.url + "/api/studies", timeout=TIMEOUT).json()
    assert body["total"] == 3
    assert [s["study_id"] for s in body["studies"]] == ["study-running", "study-new", "study-old"]
    running, new, old = body["studies"]
    assert running == {"study_id": "study-running", "started": 1_700_000_900.0, "report": False}
    assert new["report"] is True and new["modes"] == ["english", "canonical"]
    assert (new["domain"], new["difficulty"], new["seeds"], new["steps"]) == (
        "syllogism",
        1,
        [1, 2],
        400,
    )
    assert "table" not in new and "curves" not in new  # the list stays small
    assert (old["domain"], old["difficulty"]) == ("arithmetic", 2)
    limited = httpx.get(gateway.url + "/api/studies", params={"limit": 1}, timeout=TIMEOUT)
    assert [s["study_id"] for s in limited.json()["studies"]] == ["study-running"]
    assert limited.json()["total"] == 3

    one = httpx.get(gateway.url + "/api/studies/study-new", timeout=TIMEOUT)
    assert one.status_code == 200
    assert one.json() == newest | {"started": 1_700_000_500.0}


def test_the_summary_of_a_report_the_study_command_writes(
    gateway: Gateway, r: redis.Redis, tmp_path: Path
) -> None:
    plan = StudyPlan(
        study_id="study-real",
        domain="syllogism",
        difficulty=1,
        modes=("english", "encoded"),
        seeds=(1,),
        steps=80,
        eval_every=40,
        eval_size=8,
        target=0.9,
        model=None,
        started=1_700_000_000.0,
    )
    point = {"step": 40, "em": 0.5, "answer_ce": 0.3, "thinking_tokens": 9.0}
    point |= {"parse_failures": 0, "total": 8, "loss_tokens": 40_960}
    runs = [RunResult("english", 1, "done", 80, [point]), RunResult("encoded", 1, "running", 40)]
    data = study_report.report(plan, runs, env={}, wall_seconds=12.0, out=tmp_path)
    r.set(keys.study_key("study-real"), json.dumps(data))
    r.zadd(keys.STUDIES, {"study-real": plan.started})
    (listed,) = httpx.get(gateway.url + "/api/studies", timeout=TIMEOUT).json()["studies"]
    assert listed == {
        "study_id": "study-real",
        "started": 1_700_000_000.0,
        "report": True,
        "domain": "syllogism",
        "difficulty": 1,
        "modes": ["english", "encoded"],
        "seeds": [1],
        "steps": 80,
        "target": 0.9,
        "state": "incomplete",
        "wall_seconds": 12.0,
    }
    full = httpx.get(gateway.url + "/api/studies/study-real", timeout=TIMEOUT).json()
    assert full["runs"][0]["curve"] == [point] and full["table"] == data["table"]
    # The report names the host's folders; the open route answers their last component only.
    assert str(tmp_path) in json.dumps(data)
    assert str(tmp_path) not in json.dumps(full) and full["out"] == tmp_path.name


def test_an_absent_study_is_a_404_and_a_bad_id_a_400(gateway: Gateway, r: redis.Redis) -> None:
    missing = httpx.get(gateway.url + "/api/studies/study-nope", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert "no study 'study-nope'" in missing.json()["error"]
    assert "/api/studies" in missing.json()["error"]
    r.zadd(keys.STUDIES, {"study-running": time.time()})
    running = httpx.get(gateway.url + "/api/studies/study-running", timeout=TIMEOUT)
    assert running.status_code == 404 and "still running" in running.json()["error"]
    for bad in ("a%20b", "-lead", "x" * 129, "a%2A", "%F0%9F%A4%94"):
        response = httpx.get(gateway.url + f"/api/studies/{bad}", timeout=TIMEOUT)
        assert response.status_code == 400, (bad, response.text)
        assert "is not one" in response.json()["error"]


def test_a_corrupt_report_is_named_and_hides_no_other_study(
    gateway: Gateway, r: redis.Redis
) -> None:
    store(r, "study-good", 1.0)
    r.set(keys.study_key("study-bad"), b"{not json")
    r.zadd(keys.STUDIES, {"study-bad": 2.0})
    listed = httpx.get(gateway.url + "/api/studies", timeout=TIMEOUT).json()["studies"]
    assert [(s["study_id"], s["report"]) for s in listed] == [
        ("study-bad", False),
        ("study-good", True),
    ]
    bad = httpx.get(gateway.url + "/api/studies/study-bad", timeout=TIMEOUT)
    assert bad.status_code == 503
    assert keys.study_key("study-bad") in bad.json()["error"]


def progress(step: int, *, mode: str = "encoded", state: str = "running") -> StudyProgress:
    return StudyProgress(
        study_id="study-live",
        mode=mode,
        seed=1,
        step=step,
        total_steps=400,
        em=step / 400,
        answer_ce=0.5,
        thinking_tokens=9.0,
        parse_failures=0,
        loss_tokens=step * 1024,
        state=state,  # type: ignore[arg-type]
    )


def test_the_study_stream_is_followed_by_default_and_appended_last() -> None:
    assert list(keys.STREAMS)[-1] == "study"
    assert "study" in sse.DEFAULT_STREAMS
    # A cursor from before the study stream (no study pair) still parses: study starts live.
    old = "training:5-0,jobs:0-0,checkpoints:0-0,models:0-0,eval:3-1,telemetry:0-0,alerts:0-0"
    assert cursor.parse(old, sse.DEFAULT_STREAMS) == {
        "training": "5-0",
        "jobs": "0-0",
        "checkpoints": "0-0",
        "models": "0-0",
        "eval": "3-1",
        "telemetry": "0-0",
        "alerts": "0-0",
    }
    assert cursor.encode({"study": "9-0", "training": "1-0"}) == "training:1-0,study:9-0"


def test_study_events_reach_a_default_client_resumed_from_an_old_cursor(
    gateway: Gateway, r: redis.Redis
) -> None:
    pub = Publisher(r)
    before = pub.publish(progress(40))  # before the client: an old cursor never replays it
    alert_id = pub.publish(Alert(level="info", source="test", code="t", message="a"))
    old = f"training:0-0,alerts:{alert_id}"
    with httpx.stream(
        "GET", gateway.url + "/events", headers={"Last-Event-ID": old}, timeout=TIMEOUT
    ) as resp:
        assert resp.status_code == 200
        time.sleep(0.3)  # live from here
        live = pub.publish(progress(80))
        report_id = pub.publish(
            StudyReport(
                study_id="study-live",
                domain="syllogism",
                difficulty=1,
                modes=["encoded"],
                seeds=[1],
                steps=400,
                table=[{"mode": "encoded", "em": 0.9}],
                report_path="/tmp/study/report.json",
            )
        )
        frames = SseReader(resp).take(2)
    assert [f.event for f in frames] == ["study.progress", "study.report"]
    assert frames[0].data["stream"] == "study" and frames[0].data["entry_id"] == live
    assert frames[0].data["step"] == 80 and frames[0].data["thinking_tokens"] == 9.0
    assert frames[1].data["table"] == [{"mode": "encoded", "em": 0.9}]
    assert frames[1].id is not None
    assert cursor.parse(frames[1].id, sse.DEFAULT_STREAMS)["study"] == report_id
    assert before != live


@pytest.mark.parametrize("since", ["history", "0"])
def test_the_page_s_cursor_replays_a_study_s_points(
    gateway: Gateway, r: redis.Redis, since: str
) -> None:
    pub = Publisher(r)
    ids = [pub.publish(progress(s)) for s in (40, 80, 120)]
    start = since
    if since == "history":
        start = httpx.get(gateway.url + "/api/history", timeout=TIMEOUT).json()["cursor"]
        assert "study:0-0" in start
    with httpx.stream(
        "GET", gateway.url + "/events", params={"since": start}, timeout=TIMEOUT
    ) as resp:
        frames = SseReader(resp).take(3)
    assert [f.data["entry_id"] for f in frames] == ids
    assert [f.data["step"] for f in frames] == [40, 80, 120]
