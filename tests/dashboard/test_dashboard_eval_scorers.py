"""The dashboard keeps the trainer's and a node's EM apart and shows each heatmap cell's n."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bus import events as ev
from bus.publish import Publisher
from tests.rig.dashboard import Gateway


@pytest.fixture
def page(chromium: Any, gateway: Gateway) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(gateway.url + "/")
    pg.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def _result(scorer: str, step: int, em: float) -> ev.EvalResult:
    return ev.EvalResult(
        model_id=f"ckpt-{step}",
        eval_set="syllogism-d1-canonical",
        scorer=scorer,
        step=step,
        total=10,
        correct=round(em * 10),
        fixed_eval_em=em,
        pattern_heatmap={"syllogism": {"1": 0.5, "2": 0.75}},
        pattern_counts={"syllogism": {"1": 6, "2": 4}},
    )


def test_em_lines_per_scorer_and_heatmap_counts(page: Any, r: redis.Redis) -> None:
    publisher = Publisher(r)
    publisher.publish(_result("trainer", 40, 0.6))
    publisher.publish(_result("node:gpu-3090", 40, 0.5))
    labels = "() => window.__r3.charts[1].plot.series.map((x) => x.label)"
    page.wait_for_function(
        f"() => ({labels})().includes('EM syllogism-d1-canonical · node:gpu-3090')"
    )
    assert "EM syllogism-d1-canonical" in page.evaluate(labels)  # the trainer's, apart
    cells = page.locator("table.heat td")
    assert cells.count() == 2
    assert [cells.nth(i).inner_text().split() for i in range(2)] == [
        ["50%", "n", "=", "6"],
        ["75%", "n", "=", "4"],
    ]
    assert "scored by node:gpu-3090" in page.locator("#heatmap-model").text_content()
