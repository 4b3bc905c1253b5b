"""The mode study panel in the real Chromium: hidden without a study, live lines and table from
study.progress, earlier studies from GET /api/studies, and answer CE beside CE."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import events as ev
from bus import keys
from bus.publish import Publisher
from services.study import report as study_report
from services.study.plan import StudyPlan
from services.study.report import RunResult
from tests.rig.dashboard import Gateway, open_page

pytestmark = pytest.mark.slow

# Two modes x two seeds; canonical reaches 0.9 (the mean) at step 80, English never.
EM = {
    ("english", 1): [0.2, 0.5, 0.8],
    ("english", 2): [0.3, 0.6, 0.86],
    ("canonical", 1): [0.5, 0.9, 1.0],
    ("canonical", 2): [0.6, 0.95, 0.98],
}
THINKING = {"english": 105.0, "canonical": 19.0}


def _progress(mode: str, seed: int, i: int, *, state: str = "running") -> ev.StudyProgress:
    return ev.StudyProgress(
        study_id="study-live",
        mode=mode,
        seed=seed,
        step=40 * (i + 1),
        total_steps=120,
        em=EM[(mode, seed)][i],
        answer_ce=0.4 - 0.1 * i,
        thinking_tokens=THINKING[mode] + seed,
        parse_failures=seed - 1,
        loss_tokens=1024 * 40 * (i + 1),
        state=state,  # type: ignore[arg-type]
    )


@pytest.fixture
def page(chromium: Any, gateway: Gateway) -> Iterator[Any]:
    yield from open_page(chromium, gateway.url, 1280, 900)


def _rows(page: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in page.locator("#study-rows tbody tr").all():
        cells = [c.strip() for c in row.inner_text().split("\t")]
        out[str(row.get_attribute("data-mode"))] = cells
    return out


def _labels(page: Any) -> list[str]:
    return list(page.evaluate("window.__r3.charts[3].lines.map((l) => l.label)"))


def test_a_published_study_appears_with_its_lines_and_table(
    page: Any, r: redis.Redis, artifacts_dir: Path
) -> None:
    publisher = Publisher(r)
    page.evaluate("window.__r3.studiesLoaded")
    assert page.locator("#study-panel").is_hidden()  # no study: no panel

    r.zadd(keys.STUDIES, {"study-live": time.time()})
    for i in range(2):
        for mode, seed in EM:
            publisher.publish(_progress(mode, seed, i))
    page.wait_for_function("() => document.querySelectorAll('#study-rows tbody tr').length === 2")
    assert page.locator("#study-panel").is_visible()
    # One thick line per mode (the mean of its seeds) and a thin one per seed.
    assert _labels(page) == [
        "english · mean of 2",
        "english · seed 1",
        "english · seed 2",
        "canonical · mean of 2",
        "canonical · seed 1",
        "canonical · seed 2",
    ]
    means = page.evaluate(
        "[...window.__r3.charts[3].lines[3].series.ys()].map((v) => Math.round(v * 10) / 10)"
    )
    assert means == [55.0, 92.5]
    rows = _rows(page)
    assert rows["english"][0] == "english (running)"
    assert rows["english"][1:3] == ["55.0% @80", "not yet"]
    assert rows["canonical"][1:3] == ["92.5% @80", "80"]  # the mean reached 0.9 at step 80
    assert rows["canonical"][3] == "20.5"  # thinking tokens, mean over seeds
    assert rows["canonical"][4] == "0.3"  # answer-token CE at the last step
    assert rows["canonical"][5] == "0.5"  # parse failures, mean over seeds

    # The last points, then each run's end as the study command says it: a state and no
    # figures (the last point stays). English never reached the target.
    for mode, seed in EM:
        publisher.publish(_progress(mode, seed, 2))
    for mode, seed in EM:
        publisher.publish(
            ev.StudyProgress(
                study_id="study-live", mode=mode, seed=seed, step=120, total_steps=120, state="done"
            )
        )
    page.wait_for_function(
        "() => document.querySelector('#study-rows tr[data-mode=english]')"
        "?.innerText.includes('never')"
    )
    rows = _rows(page)
    assert rows["english"][:3] == ["english", "83.0% @120", "never"]
    assert rows["canonical"][:3] == ["canonical", "99.0% @120", "80"]
    assert "syllogism" not in page.locator("#study-meta").inner_text()
    publisher.publish(
        ev.StudyReport(
            study_id="study-live",
            domain="syllogism",
            difficulty=1,
            modes=["english", "canonical"],
            seeds=[1, 2],
            steps=120,
            table=[],
            report_path="/tmp/study/report.json",
        )
    )
    page.wait_for_function(
        "() => document.getElementById('study-meta').textContent.includes('syllogism d1')"
    )
    assert "seeds 1, 2" in page.locator("#study-meta").inner_text()
    page.locator("#study-panel").screenshot(path=str(artifacts_dir / "study.png"))

    # The CSV has every line's points.
    with page.expect_download() as download:
        page.locator('#study-panel button.csv[data-chart="3"]').click()
    csv = Path(download.value.path()).read_text().splitlines()
    assert csv[0] == "series,step,time_utc,value"
    assert len(csv) == 1 + 6 * 3
    assert any(line.startswith('"canonical · mean of 2",80,') for line in csv)


def test_earlier_studies_load_once_and_the_picker_shows_each(
    chromium: Any, gateway: Gateway, r: redis.Redis, tmp_path: Path
) -> None:
    # The older study as `regime3 study modes` writes its report (services.study.report).
    plan = StudyPlan(
        study_id="study-old",
        domain="arithmetic",
        difficulty=2,
        modes=("english", "encoded"),
        seeds=(1,),
        steps=400,
        eval_every=200,
        eval_size=8,
        target=0.9,
        model=None,
        started=1_700_000_000.0,
    )

    def curve(em: tuple[float, float], thinking: float) -> list[dict[str, Any]]:
        return [
            {"step": st, "em": e, "thinking_tokens": thinking, "answer_ce": 0.2}
            | {"parse_failures": 0, "total": 8, "loss_tokens": st * 1024}
            for st, e in zip((200, 400), em, strict=True)
        ]

    runs = [
        RunResult("english", 1, "done", 400, curve((0.4, 0.7), 110.0)),
        RunResult("encoded", 1, "done", 400, curve((0.6, 0.95), 9.0)),
    ]
    old = study_report.report(plan, runs, env={}, wall_seconds=60.0, out=tmp_path)
    r.set(keys.study_key("study-old"), json.dumps(old))
    r.zadd(keys.STUDIES, {"study-old": 1_700_000_000.0})
    # A newer one whose curves are columns per mode and seed.
    newer = {
        "study_id": "study-new",
        "state": "done",
        "plan": {"domain": "syllogism", "difficulty": 1, "modes": ["encoded"], "seeds": [1]},
        "table": [],
        "curves": {"encoded": {"1": {"step": [40, 80], "em": [0.5, 0.75]}}},
    }
    r.set(keys.study_key("study-new"), json.dumps(newer))
    r.zadd(keys.STUDIES, {"study-new": 1_700_000_500.0})

    pages = open_page(chromium, gateway.url, 1280, 900)
    page = next(pages)
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.wait_for_function("() => document.querySelectorAll('#study-rows tbody tr').length === 1")
    # The newest study first, from its report's curves.
    assert "study-new" in page.locator("#study-meta").inner_text()
    assert _rows(page)["encoded"][:3] == ["encoded", "75.0% @80", "never"]
    options = page.locator("#study-pick option").all_inner_texts()
    assert options[0] == "newest (study-new)"
    assert options[1].startswith("study-new · syllogism d1")
    assert options[2].startswith("study-old · arithmetic d2")

    page.select_option("#study-pick", "study-old")
    # The rows appear from the list's summary at once; their figures once the picked study's
    # report has arrived (one request): wait for those, not only for the rows.
    page.wait_for_function(
        """() => {
            const rows = document.querySelectorAll('#study-rows tbody tr');
            return rows.length === 2
                && [...rows].every(r => r.cells[1] && r.cells[1].innerText.includes('%'));
        }"""
    )
    rows = _rows(page)
    assert rows["english"][:4] == ["english", "70.0% @400", "never", "110"]
    assert rows["encoded"][:4] == ["encoded", "95.0% @400", "400", "9"]
    assert _labels(page) == [
        "english · mean of 1",
        "english · seed 1",
        "encoded · mean of 1",
        "encoded · seed 1",
    ]
    # Push-only: after the one report a pick asked for, nothing is polled.
    page.wait_for_timeout(1500)
    asked = [u for u in requests if "/api/studies" in u]
    assert asked == [f"{gateway.url}/api/studies/study-old"], asked
    next(pages, None)

    # On a phone the panel fits: the table scrolls inside it, the picker shrinks.
    pages = open_page(chromium, gateway.url, 390, 844)
    page = next(pages)
    page.wait_for_function("() => document.querySelectorAll('#study-rows tbody tr').length === 1")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    next(pages, None)


def test_answer_ce_is_shown_beside_ce_and_labelled(page: Any, r: redis.Redis) -> None:
    Publisher(r).publish(
        ev.EvalResult(
            model_id="ckpt-000040",
            eval_set="syllogism-d1-english",
            step=40,
            total=64,
            correct=40,
            fixed_eval_em=0.625,
            fixed_eval_ce=0.812,
            answer_ce=0.0421,
            thinking_tokens=104.0,
        )
    )
    page.wait_for_function("() => document.getElementById('v-answer-ce').textContent === '0.0421'")
    assert page.locator("#v-ece-ce").inner_text() == "0.812"
    cards = page.locator("#secondary h2").all_inner_texts()
    assert "FIXED-EVAL CE · PER REFERENCE TOKEN" in [c.upper() for c in cards]
    assert "ANSWER CE · PER ANSWER TOKEN" in [c.upper() for c in cards]
    assert "compares modes" in page.locator("#v-answer-ce-n").inner_text()
    assert "own reference" in page.locator("#v-ece-ce-n").inner_text()
