"""The dashboard in a real headless Chromium, served by the real gateway, fed through Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import events as ev
from bus.publish import Publisher
from bus.status import StatusStore
from tests.rig.dashboard import NODE, Gateway, open_page, step

pytestmark = pytest.mark.slow


@pytest.fixture
def publisher(r: redis.Redis) -> Publisher:
    return Publisher(r)


@pytest.fixture
def page(chromium: Any, gateway: Gateway) -> Iterator[Any]:
    yield from open_page(chromium, gateway.url, 1280, 900)


def _watch(page: Any, key: str, selector: str, text: str) -> None:
    """Record (browser clock, ms) when `selector`'s text first contains `text`."""
    page.evaluate(
        """([key, selector, text]) => {
            window.__hits = window.__hits || {};
            const check = () => {
                const node = document.querySelector(selector);
                if (node && node.textContent.includes(text) && !(key in window.__hits)) {
                    window.__hits[key] = Date.now();
                    observer.disconnect();
                }
            };
            const observer = new MutationObserver(check);
            observer.observe(document.body, {subtree: true, childList: true, characterData: true});
            check();
        }""",
        [key, selector, text],
    )


def _latency_ms(page: Any, key: str, published_at: float) -> float:
    page.wait_for_function(f"() => window.__hits && {json.dumps(key)} in window.__hits")
    seen = page.evaluate(f"window.__hits[{json.dumps(key)}]")
    return float(seen - published_at * 1000)


def _state(page: Any, expr: str) -> Any:
    return page.evaluate(f"(() => {{ const r3 = window.__r3; return {expr}; }})()")


def test_before_the_first_event_the_page_says_it_is_waiting(
    page: Any, publisher: Publisher, artifacts_dir: Path
) -> None:
    waiting = page.locator("#waiting")
    assert waiting.is_visible()
    assert "Waiting for the first training step" in waiting.inner_text()
    assert page.locator("#hosts").inner_text() == "No telemetry yet."
    page.screenshot(path=str(artifacts_dir / "waiting.png"), full_page=True)

    publisher.publish(step(1))
    page.wait_for_function("() => document.getElementById('waiting').hidden")
    assert page.locator("#v-step").inner_text() == "1 / 5,000"


def test_every_panel_updates_within_a_second_of_a_publish(
    page: Any, publisher: Publisher, artifacts_dir: Path
) -> None:
    ckpt = "ckpt-000900"
    heat = {"arith": {"easy": 0.9, "hard": 0.4}, "logic": {"easy": 0.7, "medium": 0.55}}
    layers = {
        f"model.layers.{i}": {"grad_norm": 0.1 * (i + 1), "update_norm": 1e-4} for i in range(8)
    }
    cases: list[tuple[str, str, str, ev.Event]] = [
        ("step", "#v-loss", "0.4321", step(1234, loss=0.4321)),
        ("progress", "#v-step", "1,235 / 5,000", step(1235)),
        (
            "sample",
            "#sample-answer",
            "(answer Lyon)",
            ev.TrainSample(
                current_step=1235,
                current_prompt="Capital of France?",
                golden_answer="(answer Paris)",
                model_answer="(answer Lyon)",
                answer_matches=False,
                canonical_answer="(answer Lyon)",
                total_evals=8,
                total_correct=7,
                accuracy_percent=87.5,
                accuracy_last_20=85.0,
                accuracy_last_50=80.0,
            ),
        ),
        (
            "accuracy",
            "#v-acc",
            "88.9%",
            ev.TrainSample(
                current_step=1236,
                current_prompt="p",
                golden_answer="a",
                model_answer="a",
                answer_matches=True,
                total_evals=9,
                total_correct=8,
                accuracy_percent=88.9,
            ),
        ),
        (
            "eval",
            "#v-em",
            "85.0%",
            ev.EvalResult(
                model_id=ckpt,
                eval_set="fixed-200",
                step=900,
                total=200,
                correct=170,
                fixed_eval_em=0.85,
                fixed_eval_ce=0.41,
                fixed_eval_ece=0.042,
                val_train_gap=0.07,
                pattern_heatmap=heat,
            ),
        ),
        (
            "telemetry",
            f'[data-host="{NODE}"]',
            "66 °C",
            ev.Telemetry(
                host=NODE,
                role="node",
                power_profile="quiet",
                cpu_percent=12.0,
                gpus=[
                    ev.GpuReading(
                        index=0,
                        name="RTX 3090",
                        temp_c=66.0,
                        vram_used_bytes=9 << 30,
                        vram_total_bytes=24 << 30,
                        power_watts=210.0,
                        power_limit_watts=220.0,
                    )
                ],
                ram_used_bytes=14 << 30,
                ram_total_bytes=33 << 30,
                disk_free_bytes=130 << 30,
                disk_total_bytes=249 << 30,
            ),
        ),
        (
            "ready",
            "#timeline",
            ckpt,
            ev.CheckpointReady(
                checkpoint_id=ckpt,
                step=900,
                manifest_sha256="0" * 64,
                size_bytes=1_500_000_000,
                files=7,
                val_loss=0.5,
            ),
        ),
        (
            "pulled",
            "#timeline",
            "pulled 1.4 GiB in 14.2 s",
            ev.CheckpointPulled(
                node=NODE, checkpoint_id=ckpt, bytes=1_500_000_000, download_seconds=14.2
            ),
        ),
        (
            "swapped",
            "#active-models",
            f"{NODE} serves {ckpt}",
            ev.ModelSwapped(
                node=NODE,
                model_id=ckpt,
                previous_model_id="base",
                load_seconds=3.1,
                swap_seconds=0.02,
            ),
        ),
        (
            "layers",
            "#layers",
            "model.layers.7",
            ev.TrainLayers(current_step=1235, layer_activity_summary=layers),
        ),
        (
            "alert",
            "#alerts",
            "disk below 10%",
            ev.Alert(level="warning", source="trainer", code="disk_low", message="disk below 10%"),
        ),
        (
            "queued",
            '[data-queue="train-high"]',
            "high 1",
            ev.JobQueued(job_id="job-1", queue="train-high", priority="high"),
        ),
        (
            "started",
            '[data-queue="train-high"]',
            "high 0",
            ev.JobStarted(job_id="job-1", queue="train-high", worker="trainer-a"),
        ),
        (
            "failed",
            "#alerts",
            "not JSONL at line 3",
            ev.JobFailed(
                job_id="job-1",
                queue="train-high",
                worker="trainer-a",
                reason="not JSONL at line 3",
            ),
        ),
    ]
    latencies: dict[str, float] = {}
    for key, selector, text, event in cases:
        _watch(page, key, selector, text)
        published_at = time.time()
        publisher.publish(event)
        latencies[key] = _latency_ms(page, key, published_at)

    (artifacts_dir / "latency_ms.json").write_text(json.dumps(latencies, indent=2))
    page.screenshot(path=str(artifacts_dir / "desktop.png"), full_page=True)
    early = {k: v for k, v in latencies.items() if v < 0}
    assert not early, f"shown before it was published, so nothing was measured: {early}"
    slow = {k: v for k, v in latencies.items() if v > 1000}
    assert not slow, f"publish→DOM over 1 s: {slow} (all: {latencies})"
    # What the panels show is what was published, not just that something changed.
    assert page.locator("#sample-verdict").inner_text() == "match"
    assert page.locator("#v-gap").inner_text() == "0.07"
    assert "ready→serving" in page.locator("#timeline").inner_text()
    assert page.locator("table.heat td").count() == 6  # 2 domains × 3 difficulties
    # Each fixed eval set is its own line on the accuracy chart.
    page.wait_for_function(
        "() => window.__r3.charts[1].plot.series.map((x) => x.label).includes('EM fixed-200')"
    )
    assert page.locator("#v-vram").inner_text() == "79%"  # 19 of 24 GiB
    assert page.locator("#v-vram-total").inner_text() == "19.0 GiB of 24.0 GiB"


def test_gateway_restart_resumes_with_no_gap_and_no_duplicate(
    page: Any, publisher: Publisher, gateway: Gateway, artifacts_dir: Path
) -> None:
    for n in range(1, 6):
        publisher.publish(step(n))
    page.wait_for_function("() => window.__r3.state.step?.current_step === 5")

    gateway.kill()
    page.wait_for_function("() => document.getElementById('conn').dataset.state === 'reconnecting'")
    page.screenshot(path=str(artifacts_dir / "reconnecting.png"))
    for n in range(6, 16):  # published while no gateway runs
        publisher.publish(step(n))
    gateway.start()

    page.wait_for_function("() => window.__r3.state.step?.current_step === 15", timeout=30_000)
    page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    steps = _state(page, "Array.from(r3.state.series.loss.xs('step'))")
    assert steps == list(range(1, 16))
    stats = _state(page, "r3.stream.stats")
    # The gateway resent nothing (the page would have dropped it, but counted it) …
    assert stats["duplicates"] == 0, stats
    # … and EventSource's own reconnect, with Last-Event-ID, did it: the page opened no new one.
    assert stats["reopens"] == 0, stats
    assert stats["opens"] >= 2, stats
    assert page.locator("#v-step").inner_text() == "15 / 5,000"
    # The browser logs each refused or cut connection; nothing else may have gone wrong.
    page.r3_errors[:] = [e for e in page.r3_errors if "net::ERR_" not in e]


def test_a_lagged_page_resumes_from_the_cursor_it_is_given(
    chromium: Any, redis_url: str, publisher: Publisher, tmp_path: Path, artifacts_dir: Path
) -> None:
    gw = Gateway(redis_url, tmp_path / "data", artifacts_dir / "gateway-lagged.log")
    gw.env["R3_SSE_BUFFER_EVENTS"] = "16"
    gw.start()
    try:
        pages = open_page(chromium, gw.url, 1280, 900)
        page = next(pages)
        total = 3000
        # Keep the page's main thread busy while ~25 MB go out (8 KB events), more than the
        # socket and browser buffers hold, so the gateway's 16-event buffer for it overflows.
        page.evaluate(
            "setTimeout(() => { const end = Date.now() + 3000; while (Date.now() < end); }, 0)"
        )
        bulky = "f" * 8192 + ".jsonl"
        publisher.publish_many(step(n, current_file=bulky) for n in range(1, total + 1))
        page.wait_for_function(
            f"() => window.__r3.state.step?.current_step === {total}", timeout=60_000
        )
        steps = _state(page, "Array.from(r3.state.series.loss.xs('step'))")
        stats = _state(page, "r3.stream.stats")
        assert steps == list(range(1, total + 1)), stats
        assert stats["lagged"] >= 1, f"the burst never lagged the page, nothing tested: {stats}"
        assert stats["duplicates"] == 0, stats
        next(pages, None)
    finally:
        gw.kill()


def test_phone_width_renders_without_horizontal_overflow(
    chromium: Any, gateway: Gateway, publisher: Publisher, r: redis.Redis, artifacts_dir: Path
) -> None:
    # A status set before the page opened (no train.status in the stream) comes with the
    # history the page loads first (GET /api/history reads the status hash).
    StatusStore(r).update(status="crashed", model_name="Qwen3-0.6B")
    long_name = "a_very_long_dataset_file_name_without_any_break_" * 3 + ".jsonl"
    publisher.publish(step(42, current_file=long_name))
    publisher.publish(
        ev.TrainSample(
            current_step=42,
            current_prompt="x" * 400,
            golden_answer="(answer " + "y" * 200 + ")",
            model_answer="(answer z)",
            answer_matches=False,
            accuracy_percent=50.0,
        )
    )
    publisher.publish(
        ev.EvalResult(
            model_id="ckpt-1",
            eval_set="fixed",
            step=40,
            total=10,
            correct=5,
            fixed_eval_em=0.5,
            pattern_heatmap={
                f"domain-{d}": {f"difficulty-{k}": 0.5 for k in range(8)} for d in range(4)
            },
        )
    )
    publisher.publish(ev.Alert(level="error", source="node", code="x", message="m" * 300))
    for w, h in ((360, 740), (390, 844)):
        pages = open_page(chromium, gateway.url, w, h)
        page = next(pages)
        page.wait_for_function("() => window.__r3.state.alerts.length === 1")
        assert page.locator("#trainer-status").inner_text() == "trainer crashed · Qwen3-0.6B"
        page.wait_for_timeout(400)  # one chart redraw interval
        overflow = page.evaluate(
            """() => {
                const width = document.documentElement.clientWidth;
                const wide = [...document.querySelectorAll('main *, header *')]
                    .filter((n) => n.closest('.scroll') === null)
                    .filter((n) => n.getBoundingClientRect().right > width + 1)
                    .map((n) => n.id || n.className || n.tagName);
                return {scroll: document.documentElement.scrollWidth, width, wide};
            }"""
        )
        page.screenshot(path=str(artifacts_dir / f"phone-{w}.png"), full_page=True)
        assert overflow["scroll"] <= overflow["width"], overflow
        assert not overflow["wide"], overflow
        next(pages, None)


def test_a_hundred_thousand_points_draw_in_a_frame_budget(page: Any, artifacts_dir: Path) -> None:
    result = page.evaluate(
        """() => {
            const r3 = window.__r3;
            const s = r3.state.series.loss;
            for (let i = 0; i < 100000; i++) {
                s.push(i, 1.7e9 + i, 1 + Math.sin(i / 500) + Math.random());
            }
            const chart = r3.charts[0];
            const timings = {};
            for (const [name, opts] of [
                ["raw", {axis: "step", alpha: 0, log: false}],
                ["smoothed", {axis: "step", alpha: 0.9, log: false}],
                ["log_time", {axis: "time", alpha: 0.9, log: true}],
                ["redraw", {axis: "time", alpha: 0.9, log: true}],
            ]) {
                chart.setOptions(opts);
                const t0 = performance.now();
                chart.render();
                timings[name] = performance.now() - t0;
            }
            return {timings, drawn: chart.plot.data[0].length, width: chart.plot.bbox.width};
        }"""
    )
    (artifacts_dir / "render_100k.json").write_text(json.dumps(result, indent=2))

    # Drag across the middle half of the chart: the page re-buckets that range from the raw
    # points, so the zoomed chart starts past step 0 and still has about 2 points a pixel.
    page.evaluate(
        "(() => { const c = window.__r3.charts[0];"
        " c.setOptions({axis: 'step', alpha: 0, log: false}); c.render(); })()"
    )
    box = page.locator("#chart-loss .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.__r3.charts[0].view !== null")
    page.wait_for_function("() => window.__r3.charts[0].plot.data[0][0] > 20000")
    zoomed = page.evaluate(
        "(() => { const d = window.__r3.charts[0].plot.data[0];"
        " return [d[0], d[d.length - 1], d.length]; })()"
    )
    assert 20_000 < zoomed[0] < 30_000 and 70_000 < zoomed[1] < 80_000, zoomed
    assert zoomed[2] > 500, zoomed  # not the ~250 points left of the whole-range buckets
    page.locator("#chart-loss").dblclick()
    # Back to everything: the first bucket (its min or max) lies within the first 500 steps.
    page.wait_for_function(
        "() => window.__r3.charts[0].view === null && window.__r3.charts[0].plot.data[0][0] < 500"
    )
    # Min/max buckets: about two points per pixel column, not 100k.
    assert result["drawn"] <= 2 * result["width"] + 2, result
    # A rebuild (new scale) or a redraw of 100k raw points stays under ~6 frames on this
    # shared 2-core machine; typically far less.
    assert max(result["timings"].values()) < 100, result


def test_downsampling_keeps_each_buckets_extremes_and_zooms_from_raw(page: Any) -> None:
    result = page.evaluate(
        """async () => {
            const { Series, downsample, smooth } = await import('./series.js');
            const s = new Series({capacity: 4});  // grows past its first capacity
            for (let i = 0; i < 100000; i++) {
                s.push(i, i, i === 31337 ? 50 : (i === 77777 ? -50 : 1));
            }
            const [xs, ys] = downsample(s.xs('step'), s.ys(), 500);
            const [zx, zy] = downsample(s.xs('step'), s.ys(), 500, 31000, 31600);
            const flat = smooth(Float64Array.from([0, 10, 10, 10]), 0.5);
            // A resume from an earlier checkpoint: training points past it are superseded.
            const resumed = new Series();
            for (const x of [1, 2, 3, 4, 5]) resumed.push(x, x, x);
            resumed.push(3, 6, 30);
            // Evaluations may finish out of order: a late one is ignored, not a rewind.
            const evals = new Series({onRewind: 'drop'});
            for (const x of [100, 300, 200]) evals.push(x, x, x);
            return {
                n: s.n, points: xs.length, max: Math.max(...ys), min: Math.min(...ys),
                maxAt: xs[ys.indexOf(50)], sorted: xs.every((x, i) => i === 0 || x >= xs[i - 1]),
                zoomPoints: zx.length, zoomFirst: zx[0], zoomLast: zx[zx.length - 1],
                zoomSpike: zy.includes(50), smoothed: Array.from(flat),
                resumed: [Array.from(resumed.xs('step')), Array.from(resumed.ys())],
                evals: Array.from(evals.xs('step')),
            };
        }"""
    )
    assert result["n"] == 100_000
    assert result["points"] <= 1000
    # Min/max buckets: a one-point spike either way survives 200× downsampling.
    assert (result["max"], result["min"], result["maxAt"]) == (50, -50, 31337)
    assert result["sorted"]
    # A zoomed range is re-read from the raw points: all 602 of them, spike included.
    assert result["zoomPoints"] == 602
    assert (result["zoomFirst"], result["zoomLast"]) == (30999, 31600)
    assert result["zoomSpike"]
    assert result["smoothed"] == [0, 5, 7.5, 8.75]
    assert result["resumed"] == [[1, 2, 3], [1, 2, 30]]
    assert result["evals"] == [100, 300]


def test_answer_evolution_shows_how_a_probe_changed(
    page: Any, publisher: Publisher, r: redis.Redis, artifacts_dir: Path
) -> None:
    from services.validation.evolution import ProbeAnswer, record_probes

    answers = [(40, "", None), (80, "invalid", "step-00000080"), (120, "valid", "step-00000120")]
    for n, (at_step, answer, checkpoint) in enumerate(answers):
        record_probes(
            r,
            eval_set="syllogism-d1-canonical",
            step=at_step,
            model_id=checkpoint or f"step-{at_step}",
            checkpoint_id=checkpoint,
            time=f"2026-11-24T03:00:0{n}Z",
            answers=[
                ProbeAnswer(
                    id="p1",
                    question="All cats are animals. Tom is a cat. Is Tom an animal?",
                    golden="valid",
                    answer=answer,
                    match=answer == "valid",
                    parse_failed=answer == "",
                )
            ],
        )
    # The page reads the probe history after an eval.result arrives.
    publisher.publish(
        ev.EvalResult(
            model_id="step-00000120",
            eval_set="syllogism-d1-canonical",
            step=120,
            total=64,
            correct=60,
            fixed_eval_em=60 / 64,
        )
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#evolution td.evo').length === 3", timeout=5000
    )
    cells = page.locator("#evolution td.evo")
    assert [cells.nth(i).get_attribute("class") for i in range(3)] == [
        "evo unparsed",
        "evo bad",
        "evo ok",
    ]
    assert page.locator("#evolution thead").inner_text().strip().split("\t")[1:] == [
        "step 40",
        "step 80",
        "step 120",
    ]
    page.locator("#evolution-panel").screenshot(path=str(artifacts_dir / "evolution.png"))
