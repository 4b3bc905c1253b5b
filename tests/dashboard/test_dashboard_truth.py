"""What the user sees is true (issue 15), in the real Chromium at 1,400 and 390 px."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import events as ev
from bus.history import HistoryWriter
from bus.publish import Publisher
from codec.problem import STOP, THINK
from services.validation.evolution import ProbeAnswer, record_probes
from tests.gateway.week import WEEK_STEPS, simulate_week
from tests.rig.dashboard import CHROMIUM, Gateway, open_page, step

pytestmark = pytest.mark.slow

WIDE = (1400, 1000)
PHONE = (390, 844)


@pytest.fixture
def publisher(r: redis.Redis) -> Publisher:
    return Publisher(r)


def _page(chromium: Any, url: str, size: tuple[int, int]) -> Iterator[Any]:
    return open_page(chromium, url, *size)


def _requests(page: Any) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url))
    return seen


def _cut_figures(page: Any) -> list[str]:
    """Figures that wrap onto a second line or are cut off (an ellipsis) in their card."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('.value:not(.small)')].filter((n) => {
                const lineHeight = parseFloat(getComputedStyle(n).lineHeight) || 30;
                const wraps = n.offsetHeight > lineHeight * 1.5 || n.getClientRects().length > 1;
                return n.scrollWidth > n.clientWidth + 1 || wraps;
            }).map((n) => `${n.id}: ${n.textContent}`)"""
        )
    )


def _publish_a_busy_run(r: redis.Redis, publisher: Publisher) -> None:
    publisher.publish(
        ev.TrainStatus(
            host="trainer-a", run_id="run-test", status="training", model_name="Qwen3-0.6B"
        )
    )
    backlog = {
        "high": {"files": 1, "examples": 500, "tokens": 61_000},
        "normal": {"files": 7, "examples": 14_000, "tokens": 1_708_000},
        "low": {"files": 2, "examples": 4_000, "tokens": 488_000},
    }
    for n in range(1, 120):
        publisher.publish(
            step(
                n,
                total_steps=537,
                loss=0.0081 if n == 119 else 2.0 / (1 + n / 10),
                learning_rate=0.00012345,
                eta_seconds=41.9,
                queue_eta_seconds=7 * 3600 + 1234,
                queue_backlog=backlog,
                file_examples_done=850,
                file_examples_total=4000,
            )
        )
    answer = f"{THINK * 4}\nAll cats are animals.\n{STOP * 3}\nvalid"
    publisher.publish(
        ev.TrainSample(
            current_step=119,
            current_prompt="All cats are animals. Tom is a cat. Is Tom an animal?",
            golden_answer=answer,
            model_answer=answer,
            answer_matches=True,
            total_evals=3,
            total_correct=3,
            accuracy_percent=100.0,
            accuracy_last_20=100.0,
            accuracy_last_50=100.0,
        )
    )
    publisher.publish(
        ev.EvalResult(
            model_id="step-119",
            eval_set="syllogism-d1-canonical",
            step=119,
            total=64,
            correct=37,
            fixed_eval_em=37 / 64,
            fixed_eval_ce=0.41,
            fixed_eval_ece=0.0123,
        )
    )
    for k in range(13):
        cid = f"step-{(k + 1) * 9:08d}"
        publisher.publish(
            ev.CheckpointReady(
                checkpoint_id=cid,
                step=(k + 1) * 9,
                manifest_sha256="0" * 64,
                size_bytes=1_500_000_000,
                files=7,
            )
        )
    layers = {
        f"model.layers.{i}": {
            "grad_norm": 0.1 * (i + 1),
            "update_norm": 1e-4,
            "weight_norm": 12.5,
            "activation_rms": 0.9,
            "attention_entropy": 2.2,
        }
        for i in range(28)
    }
    publisher.publish(ev.TrainLayers(current_step=119, layer_activity_summary=layers))
    for n, at_step in enumerate((20, 40, 60, 80, 100, 119)):
        record_probes(
            r,
            eval_set="syllogism-d1-canonical",
            step=at_step,
            model_id=f"step-{at_step}",
            checkpoint_id=None,
            time=f"2026-11-24T03:00:0{n}Z",
            answers=[
                ProbeAnswer(
                    id=f"p{i}",
                    question="All cats are animals. Tom is a cat. Is Tom an animal? " * 2,
                    golden="valid",
                    answer=f"{STOP * 3}\nvalid" if at_step > 40 else "invalid",
                    match=at_step > 40,
                    parse_failed=False,
                )
                for i in range(4)
            ],
        )
    publisher.publish(
        ev.EvalResult(
            model_id="step-119b",
            eval_set="syllogism-d1-canonical",
            step=119,
            total=64,
            correct=37,
            fixed_eval_em=37 / 64,
        )
    )


def test_the_figures_say_what_they_are_at_1400_and_390(
    chromium: Any, gateway: Gateway, publisher: Publisher, r: redis.Redis, artifacts_dir: Path
) -> None:
    _publish_a_busy_run(r, publisher)
    pages = _page(chromium, gateway.url, WIDE)
    page = next(pages)
    requests = _requests(page)
    page.wait_for_function("() => document.querySelectorAll('#evolution td.evo').length === 24")
    page.wait_for_function("() => window.__r3.state.step?.current_step === 119")
    page.wait_for_timeout(1500)

    # Step and ETA say they are the current file's; the whole queue has its own ETA and table.
    assert "of this file's estimated end" in page.locator("#v-epoch").inner_text()
    assert page.locator("#v-eta").inner_text() == "41.9 s"
    assert page.locator("#v-qeta").inner_text() == "7h 20m"
    assert page.locator("#v-qeta-at").inner_text().startswith("10 more file(s)")
    rows = page.locator("#v-backlog tbody tr")
    assert [rows.nth(i).inner_text().split("\t") for i in range(4)] == [
        ["high", "1", "500", "61K"],
        ["normal", "7", "14K", "1.71M"],
        ["low", "2", "4K", "488K"],
        ["all", "10", "18.5K", "2.26M"],
    ]
    assert "850 / 4,000 examples" in page.locator("#v-file-progress").inner_text()

    # Every rate says its n; three samples are visibly provisional, 64 eval answers are not.
    assert page.locator("#v-acc-n").inner_text() == "3 of 3 samples · provisional (n < 30)"
    assert page.locator("#v-acc").get_attribute("data-provisional") == "true"
    assert page.locator("#v-acc20-n").inner_text().startswith("of the last 3 samples")
    assert page.locator("#v-em").inner_text() == "57.8%"
    assert page.locator("#v-em-n").inner_text() == "37 of 64 · syllogism-d1-canonical"
    assert page.locator("#v-em").get_attribute("data-provisional") == "false"
    assert page.locator("#v-ece-n").inner_text() == "n = 64 answers"

    # The trainer's status came as an event; the page polls nothing.
    assert page.locator("#trainer-status").inner_text() == "trainer training · Qwen3-0.6B"
    page.wait_for_timeout(1000)
    assert not [u for u in requests if "training_status.json" in u], requests

    # 🤔/🛑 runs read "🤔×4" / "🛑×3" (an emoji font is installed with the browser).
    assert page.evaluate("document.documentElement.classList.contains('no-emoji')") is False
    answer = page.locator("#sample-answer").inner_text()
    assert "\U0001f914×4" in answer and "\U0001f6d1×3" in answer

    # No figure wraps or is cut at 1,400 px.
    assert not _cut_figures(page), _cut_figures(page)

    # The checkpoint timeline: the newest 3, then "more" with the other 10.
    assert page.locator("#timeline > ul > li").count() == 3
    assert page.locator("#timeline-more summary").inner_text() == "more: 10 older checkpoint(s)"
    assert page.locator("#timeline-more li").first.is_hidden()
    page.screenshot(path=str(artifacts_dir / "truth-1400.png"), full_page=True)
    page.locator("#timeline-more summary").click()
    assert page.locator("#timeline-more li").first.is_visible()
    next(pages, None)

    # At 390 px the wide tables scroll: their last column can be brought into view.
    pages = _page(chromium, gateway.url, PHONE)
    page = next(pages)
    page.wait_for_function("() => document.querySelectorAll('#evolution td.evo').length === 24")
    page.wait_for_function("() => document.querySelectorAll('#layers tbody tr').length === 28")
    for table in ("#evolution", "#layers"):
        reach = page.evaluate(
            """(sel) => {
                const box = document.querySelector(sel + ' .scroll');
                const scrolls = box.scrollWidth > box.clientWidth;
                box.scrollLeft = box.scrollWidth;
                const last = box.querySelector('thead th:last-child').getBoundingClientRect();
                const first = box.querySelector('thead th:first-child').getBoundingClientRect();
                return {scrolls, lastRight: last.right, firstLeft: first.left,
                        width: document.documentElement.clientWidth};
            }""",
            table,
        )
        assert reach["scrolls"], reach
        assert reach["lastRight"] <= reach["width"] + 1, reach  # the last column is reachable
        assert reach["firstLeft"] >= 0, reach  # and the row names stay in view (sticky)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE[0]
    page.screenshot(path=str(artifacts_dir / "truth-390.png"), full_page=True)
    next(pages, None)


def test_without_an_emoji_font_the_markers_are_spelled_out(
    chromium: Any,
    gateway: Gateway,
    publisher: Publisher,
    r: redis.Redis,
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    # A fontconfig with the system fonts but no emoji font: what the test machine had.
    conf = tmp_path / "fonts.conf"
    conf.write_text(
        """<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>
        <dir>/usr/share/fonts/truetype/dejavu</dir><cachedir>%s</cachedir>
        </fontconfig>"""
        % (tmp_path / "fc-cache")
    )
    answer = f"{THINK * 4}\nreasoning\n{STOP * 3}\nvalid"
    publisher.publish(step(5))
    publisher.publish(
        ev.TrainSample(
            current_step=5,
            current_prompt="p",
            golden_answer=answer,
            model_answer=answer,
            answer_matches=True,
            total_evals=1,
            total_correct=1,
        )
    )
    # A second browser from the module's playwright (one sync playwright per thread).
    browser = chromium.browser_type.launch(
        executable_path=str(CHROMIUM),
        args=["--no-sandbox"],
        env={**os.environ, "FONTCONFIG_FILE": str(conf)},
    )
    try:
        pages = _page(browser, gateway.url, WIDE)
        page = next(pages)
        page.wait_for_function("() => document.getElementById('sample-answer') !== null")
        assert page.evaluate("document.documentElement.classList.contains('no-emoji')")
        text = page.locator("#sample-answer").inner_text()
        assert "think×4" in text and "stop×3" in text, text
        page.locator("#sample-panel").screenshot(path=str(artifacts_dir / "no-emoji-font.png"))
        next(pages, None)
    finally:
        browser.close()


def test_loss_ticks_csv_and_compare(
    chromium: Any, gateway: Gateway, publisher: Publisher, r: redis.Redis, artifacts_dir: Path
) -> None:
    # An earlier run's history, then the current run (losses from 8 down to 0).
    old = HistoryWriter(r, "run-old")
    for n in range(1, 2001):
        old.add(n, 1_700_000_000 + n, {"loss": 9.0 - n / 250, "tps": 7000.0}, write=False)
    old.flush()
    publisher.publish_many(step(n, loss=8.0 * (1 - n / 400)) for n in range(1, 401))
    publisher.publish(
        ev.EvalResult(
            model_id="m", eval_set="fixed", step=400, total=64, correct=32, fixed_eval_em=0.5
        )
    )
    pages = _page(chromium, gateway.url, WIDE)
    page = next(pages)
    page.wait_for_function("() => window.__r3.state.step?.current_step === 400")
    page.wait_for_timeout(600)

    # Loss axis ticks step by 1, 2 or 5 (never 2.5, which printed as 0, 3, 5, 8).
    ticks = page.evaluate("window.__r3.charts[0].plot.axes[1]._values")
    values = [float(t) for t in ticks]
    steps = {round(b - a, 6) for a, b in itertools.pairwise(values)}
    assert len(steps) == 1 and steps.pop() in (0.5, 1.0, 2.0, 5.0), ticks

    # Each chart downloads as CSV: every point of every line.
    with page.expect_download() as download:
        page.locator('button.csv[data-chart="0"]').click()
    path = download.value.path()
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "series,step,time_utc,value"
    loss_rows = [row for row in lines[1:] if row.startswith('"loss",')]
    assert len(loss_rows) == 400 and loss_rows[-1].split(",")[1] == "400"
    with page.expect_download() as download:
        page.locator('button.csv[data-chart="1"]').click()
    assert any(
        row.startswith('"EM fixed",400,')
        for row in Path(download.value.path()).read_text().splitlines()
    )

    # Compare: the earlier run dashed over this one, on loss and tokens/s.
    page.evaluate("window.__r3.refreshCompareOptions()")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#c-compare option')]"
        ".some((o) => o.value === 'run:run-old')"
    )
    page.select_option("#c-compare", "run:run-old")
    page.wait_for_function(
        "() => window.__r3.charts[0].plot.series.some((s) => s.label === 'loss · run-old')"
    )
    labels = page.evaluate("window.__r3.charts[2].plot.series.map((s) => s.label)")
    assert "tokens/s · run-old" in labels
    page.locator("#charts-panel").screenshot(path=str(artifacts_dir / "compare.png"))
    next(pages, None)


def test_a_week_of_history_is_on_screen_within_two_seconds(
    chromium: Any, gateway: Gateway, publisher: Publisher, r: redis.Redis, artifacts_dir: Path
) -> None:
    wrote = simulate_week(r, run_id="run-test")
    context = chromium.new_context(viewport={"width": WIDE[0], "height": WIDE[1]})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    began = time.perf_counter()
    page.goto(gateway.url + "/")
    # On screen: the loss chart drawn from the week's first bucket (4,096 steps) to its last step.
    page.wait_for_function(
        f"""() => {{
            const d = window.__r3?.charts[0].plot?.data?.[0];
            return d && d.length > 100 && d[0] <= 4096 && d[d.length - 1] >= {WEEK_STEPS};
        }}""",
        timeout=30_000,
        polling=50,
    )
    opened = time.perf_counter() - began
    page.screenshot(path=str(artifacts_dir / "week-1400.png"), full_page=False)
    assert not _cut_figures(page), _cut_figures(page)  # "1,008,000 / 1,008,000" fits
    # Then live: a step published now arrives through the cursor the history gave.
    live = step(WEEK_STEPS + 1, run_id="run-test", total_steps=None, eta_seconds=None)
    publisher.publish(live.model_copy(update={"tokens_per_sec": 9100.0, "loss": 0.35}))
    page.wait_for_function(f"() => window.__r3.state.step?.current_step === {WEEK_STEPS + 1}")
    stats = page.evaluate("window.__r3.stream.stats")
    # Zooming into a stretch days back loads it at a finer bucket width than the opening's.
    coarse = page.evaluate("window.__r3.state.history.width")
    box = page.locator("#chart-loss .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.45, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    page.wait_for_function(
        """(coarse) => {
            const d = window.__r3.charts[0].plot.data[0];
            const gaps = d.slice(1).map((x, i) => x - d[i]).filter((g) => g > 0);
            gaps.sort((a, b) => a - b);
            return d.length > 50 && gaps[gaps.length >> 1] < coarse / 4;
        }""",
        arg=coarse,
        timeout=10_000,
    )
    page.screenshot(path=str(artifacts_dir / "week-zoomed-1400.png"), full_page=False)
    (artifacts_dir / "week_open.json").write_text(
        json.dumps(
            {"steps": WEEK_STEPS, "write_s": wrote, "open_s": opened, "stream": stats}, indent=2
        )
    )
    context.close()
    assert not errors, errors
    assert stats["duplicates"] == 0, stats
    # Only the tail was replayed raw, not the trimmed stream's 200k entries.
    assert stats["received"] <= 2_100, stats
    assert opened <= 2.0, f"a week of history took {opened:.2f} s to show"


def test_a_training_trainer_that_sends_no_step_is_shown_silent(
    chromium: Any, gateway: Gateway, publisher: Publisher
) -> None:
    from datetime import UTC, datetime, timedelta

    # The trainer said "training", then was killed: no status change will ever come.
    ago = datetime.now(UTC) - timedelta(minutes=10)
    publisher.publish(ev.TrainStatus(status="training", model_name="Qwen3-0.6B", time=ago))
    publisher.publish(step(7, time=ago))
    pages = _page(chromium, gateway.url, WIDE)
    page = next(pages)
    page.wait_for_function("() => window.__r3.state.step?.current_step === 7")
    pill = page.locator("#trainer-status")
    page.wait_for_function(
        "() => document.getElementById('trainer-status').dataset.status === 'silent'"
    )
    assert pill.inner_text().startswith("trainer silent: no word for 10m")
    # A live trainer validating a large file sends no step for minutes, but its job's
    # progress: that is a word from it, so it is not silent.
    publisher.publish(
        ev.JobProgress(job_id="j1", queue="train-normal", func="f", done=5, unit="lines")
    )
    page.wait_for_function(
        "() => document.getElementById('trainer-status').dataset.status === 'training'"
    )
    next(pages, None)
