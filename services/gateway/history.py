"""GET /api/history: a run's training history downsampled, and where the live stream takes over.

A page opening on a run of weeks asks here first: it gets the run's rollups (bus/history.py)
at the finest level that spans the run in about `points` buckets (min/max/last each), the
trainer's status, and a cursor for `/events` that replays only the last `REPLAY_TAIL`
training entries (every other stream from what it retains). The replayed tail overlaps the
rollups' last buckets, and the page's series drop superseded points on a rewind, so the
switch from history to live has no gap; the tail brings the latest sample and layer report.
"""

from __future__ import annotations

import math
from typing import Any, cast

import redis
from fastapi import APIRouter, Query, Request

from bus import history, keys, liveness
from bus.status import StatusStore
from services.gateway import cursor, sse

router = APIRouter()

REPLAY_TAIL = 2000  # newest training entries the page replays raw after the rollups
# The streams the page follows: every one must be in the cursor, or it would start live and
# miss what it retains (checkpoints, evaluations, alerts, a study's points).
PAGE_STREAMS = sse.DEFAULT_STREAMS
EM_SCAN = 20_000  # eval.result entries read for a compared run's EM (the stream's cap)


def current_run(connection: redis.Redis) -> str | None:
    """The run of the newest training event, else the run with the newest history."""
    newest = cast(list[Any], connection.xrevrange(keys.STREAM_TRAINING, count=1))
    if newest:
        run = newest[0][1].get(b"run_id")
        if run:
            return cast(bytes, run).decode()
    runs = history.runs(connection)
    if not runs:
        return None
    return max(runs, key=lambda r: runs[r].get("last_time") or 0)


def _before(entry_id: str) -> str:
    """The entry id just before `entry_id`, so reading after it includes `entry_id`."""
    ms, seq = cursor.id_key(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms > 0 else cursor.EARLIEST


def tail_cursor(connection: redis.Redis) -> str:
    """An `/events` cursor replaying the newest REPLAY_TAIL training entries and everything
    the other streams retain."""
    tail = cast(list[Any], connection.xrevrange(keys.STREAM_TRAINING, count=REPLAY_TAIL))
    training = cursor.EARLIEST
    if len(tail) == REPLAY_TAIL:
        oldest = tail[-1][0]
        training = _before(oldest.decode() if isinstance(oldest, bytes) else oldest)
    positions = dict.fromkeys(PAGE_STREAMS, cursor.EARLIEST)
    positions["training"] = training
    return cursor.encode(positions)


def columns(window: history.HistoryWindow) -> dict[str, Any]:
    """Buckets as columns: first/last step, last time, and per metric min/max/last lists."""
    out: dict[str, Any] = {
        "s0": [b.first_step for b in window.buckets],
        "s1": [b.last_step for b in window.buckets],
        "t1": [b.last_time for b in window.buckets],
        "n": [b.n for b in window.buckets],
    }
    for metric in history.METRICS:
        values = [b.values.get(metric) for b in window.buckets]
        if any(v is not None for v in values):
            out[metric] = [
                [None if v is None else v[i] for v in values] for i in range(3)
            ]  # [min[], max[], last[]]
    return out


def em_line(eval_set: str, scorer: str) -> str:
    """One EM line per set and scorer (the dashboard's rule, dashboards/state.js emLine): the
    trainer's keeps the set's name, a node's adds its own, so the two never zigzag in one."""
    if scorer in ("", "null", "trainer"):
        return eval_set
    return f"{eval_set} · {scorer}"


def em_history(connection: redis.Redis, first_time: float, last_time: float) -> dict[str, Any]:
    """EM of every fixed eval set scored while a run trained: {set: {"step": [], "em": []}}.

    Evaluations come from the node, which does not know the trainer's run, so a run's are
    those published between its first and last training point.
    """
    entries = cast(list[Any], connection.xrevrange(keys.STREAM_EVAL, count=EM_SCAN))
    out: dict[str, dict[str, list[float]]] = {}
    for entry_id, fields in reversed(entries):
        ms = int(entry_id.split(b"-")[0]) / 1000
        if not first_time <= ms <= last_time + 60:
            continue
        step, em = fields.get(b"step"), fields.get(b"fixed_eval_em")
        name = em_line(fields.get(b"eval_set", b"").decode(), fields.get(b"scorer", b"").decode())
        if not step or em is None or step in (b"", b"null"):
            continue
        series = out.setdefault(name, {"step": [], "em": []})
        series["step"].append(int(step))
        series["em"].append(float(em))
    return out


@router.get("/api/history/runs")
def history_runs(request: Request) -> dict[str, Any]:
    """Every run with history, newest first: {run id: {first_step, last_step, …}}."""
    runs = history.runs(request.app.state.redis)
    order = sorted(runs, key=lambda r: runs[r].get("last_time") or 0, reverse=True)
    return {"runs": {r: runs[r] for r in order}, "current": current_run(request.app.state.redis)}


@router.get("/api/history")
def training_history(
    request: Request,
    run: str | None = Query(None, description="Run id; default: the run training now"),
    first: int | None = Query(None, ge=0, description="First step of the range"),
    last: int | None = Query(None, ge=0, description="Last step of the range"),
    points: int = Query(1000, ge=10, le=20_000, description="Most buckets to return"),
    em: bool = Query(False, description="Add the run's fixed-eval EM (for a comparison)"),
) -> dict[str, Any]:
    connection = request.app.state.redis
    # The cursor first: an event published while the rollups are read is then replayed.
    live = tail_cursor(connection)
    run_id = run or current_run(connection)
    body: dict[str, Any] = {
        "run_id": run_id,
        "cursor": live,
        # As /status/training_status.json answers it: a dead trainer's 'training' is crashed.
        "status": liveness.shown(StatusStore(connection).read(), connection).model_dump(
            mode="json"
        ),
    }
    if run_id is None:
        return body | {"width": None, "buckets": columns(history.HistoryWindow("", 1, []))}
    window = history.read(connection, run_id, first=first, last=last, points=points)
    body |= {"width": window.width, "buckets": columns(window)}
    info = history.runs(connection).get(run_id)
    body["run"] = info
    if em and info:
        body["em"] = em_history(
            connection, info.get("first_time") or 0.0, info.get("last_time") or math.inf
        )
    return body
