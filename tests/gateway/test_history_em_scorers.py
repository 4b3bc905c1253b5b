"""The history's EM lines keep the trainer's and a node's results of one set apart."""

from __future__ import annotations

import redis

from bus.events import EvalResult
from bus.publish import Publisher
from services.gateway.history import em_history


def test_one_em_line_per_set_and_scorer(r: redis.Redis) -> None:
    publisher = Publisher(r)
    for scorer, step, em in [("trainer", 10, 0.5), ("node:a", 10, 0.4), (None, 20, 0.6)]:
        publisher.publish(
            EvalResult(
                model_id="m",
                eval_set="s",
                scorer=scorer,
                step=step,
                total=10,
                correct=5,
                fixed_eval_em=em,
            )
        )
    lines = em_history(r, 0, 1e12)
    # An event from before the one scorer (no scorer) joins the trainer's line, as it did.
    assert lines == {
        "s": {"step": [10, 20], "em": [0.5, 0.6]},
        "s · node:a": {"step": [10], "em": [0.4]},
    }
