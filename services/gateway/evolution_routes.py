"""GET /api/evolution: how the probe set's answers changed from one evaluation to the next."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from services.validation.evolution import read_evolution

router = APIRouter()


@router.get("/api/evolution")
def evolution(
    request: Request,
    eval_set: str | None = Query(
        None, description="One validation set, e.g. syllogism-d1-canonical"
    ),
    checkpoints_only: bool = Query(False, description="Only evaluations made at a checkpoint"),
    limit: int = Query(200, ge=1, le=2000, description="How many recent evaluations to read"),
) -> dict[str, Any]:
    return read_evolution(
        request.app.state.redis, eval_set=eval_set, checkpoints_only=checkpoints_only, limit=limit
    )
