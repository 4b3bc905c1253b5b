"""`GET /jobs`: the node queues' pending, running, done and failed jobs, from RQ's registries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import redis
from fastapi import APIRouter, Depends, Query, Request
from rq.job import Job
from rq.queue import Queue
from rq.registry import BaseRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from bus import keys
from services.node.api.auth import require_reader

State = Literal["pending", "running", "done", "failed"]
STATES: tuple[State, ...] = ("pending", "running", "done", "failed")

# Open like the completions, or token-protected with them (R3_NODE_PROTECT_READS).
router = APIRouter(dependencies=[Depends(require_reader)])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _summary(job: Job, state: State, queue: str) -> dict[str, Any]:
    started, ended = job.started_at, job.ended_at
    out: dict[str, Any] = {
        "id": job.id,
        "queue": queue,
        "state": state,
        "func": job.func_name,
        "description": job.description,
        "kwargs": job.kwargs,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_seconds": (ended - started).total_seconds() if started and ended else None,
    }
    if state == "failed":
        latest = job.latest_result()
        text = ((latest.exc_string if latest else None) or "").strip().splitlines()
        out["error"] = text[-1] if text else None  # the exception line, not the traceback
    if state == "done":
        value = job.return_value()
        out["result"] = value if isinstance(value, dict) else None
    return out


def _newest_ids(registry: BaseRegistry, limit: int) -> list[str]:
    # Registries are sorted sets scored by expiry or start time: the last are the newest.
    return list(registry.get_job_ids(0, limit - 1, desc=True))


def list_jobs(connection: redis.Redis, *, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
    """Up to `limit` jobs per state and queue; pending in queue order, the others newest
    first. Jobs whose data expired meanwhile are left out."""
    out: dict[str, list[dict[str, Any]]] = {state: [] for state in STATES}
    for name in keys.NODE_QUEUES:
        queue = Queue(name, connection=connection)
        ids: dict[State, list[str]] = {
            "pending": queue.get_job_ids(0, limit - 1),
            "running": _newest_ids(StartedJobRegistry(queue=queue), limit),
            "done": _newest_ids(FinishedJobRegistry(queue=queue), limit),
            "failed": _newest_ids(FailedJobRegistry(queue=queue), limit),
        }
        for state, job_ids in ids.items():
            for job in Job.fetch_many(job_ids, connection=connection):
                if job is not None:
                    out[state].append(_summary(job, state, name))
    return out


@router.get("/jobs")
def jobs_route(
    request: Request, limit: int = Query(50, ge=1, le=1000, description="Jobs per state and queue.")
) -> dict[str, Any]:
    """Eval and generation jobs of this node's queues with their times."""
    node: Any = request.app.state.node
    return {"queues": list(keys.NODE_QUEUES), **list_jobs(node.redis, limit=limit)}
