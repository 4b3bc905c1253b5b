"""The evolution tracker: a fixed probe set's answers at every evaluated checkpoint, in Redis.

Each evaluation appends one entry to the stream `r3:evolution` (bus.keys.EVOLUTION) with the
step, the checkpoint id (when a checkpoint was evaluated) and, per probe, the model's answer
and verdict. `read_evolution` turns the stream into JSON for the gateway and dashboard:
per probe, the answers in training order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from bus import keys


@dataclass(frozen=True)
class ProbeAnswer:
    """One probe's answer on one model."""

    id: str
    question: str
    golden: str
    answer: str
    match: bool
    parse_failed: bool


def record_probes(
    connection: redis.Redis,
    *,
    eval_set: str,
    step: int,
    model_id: str,
    checkpoint_id: str | None,
    time: str,
    answers: Sequence[ProbeAnswer],
) -> str:
    """Append one evaluation's probe answers; returns the stream entry id."""
    entry = {
        "eval_set": eval_set,
        "step": str(step),
        "model_id": model_id,
        "checkpoint_id": checkpoint_id or "",
        "time": time,
        "answers": json.dumps([asdict(a) for a in answers], ensure_ascii=False),
    }
    entry_id = connection.xadd(
        keys.EVOLUTION,
        cast(Any, entry),
        maxlen=keys.EVOLUTION_MAXLEN,
        approximate=True,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_evolution(
    connection: redis.Redis,
    *,
    eval_set: str | None = None,
    checkpoints_only: bool = False,
    limit: int = 200,
) -> dict[str, Any]:
    """JSON-ready history: {"evaluations": [{step, model_id, checkpoint_id, time, eval_set}],
    "probes": [{id, question, golden, eval_set, history: [{step, checkpoint_id, answer, match,
    parse_failed}]}]}, oldest first, from the last `limit` entries."""
    raw = cast(list[Any], connection.xrevrange(keys.EVOLUTION, count=limit))
    evaluations: list[dict[str, Any]] = []
    probes: dict[tuple[str, str], dict[str, Any]] = {}
    for entry_id, fields in reversed(raw):
        data = {_text(k): _text(v) for k, v in fields.items()}
        if eval_set is not None and data.get("eval_set") != eval_set:
            continue
        checkpoint = data.get("checkpoint_id") or None
        if checkpoints_only and checkpoint is None:
            continue
        step = int(data.get("step", "0"))
        evaluations.append(
            {
                "entry_id": _text(entry_id),
                "step": step,
                "model_id": data.get("model_id"),
                "checkpoint_id": checkpoint,
                "time": data.get("time"),
                "eval_set": data.get("eval_set"),
            }
        )
        for answer in json.loads(data.get("answers", "[]")):
            key = (data.get("eval_set", ""), answer["id"])
            probe = probes.setdefault(
                key,
                {
                    "id": answer["id"],
                    "eval_set": data.get("eval_set"),
                    "question": answer["question"],
                    "golden": answer["golden"],
                    "history": [],
                },
            )
            probe["history"].append(
                {
                    "step": step,
                    "checkpoint_id": checkpoint,
                    "answer": answer["answer"],
                    "match": answer["match"],
                    "parse_failed": answer["parse_failed"],
                }
            )
    return {"evaluations": evaluations, "probes": list(probes.values())}
