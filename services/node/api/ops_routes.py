"""GET /gpu, GET /system, GET /power and POST /power/profile: the node's hardware over HTTP."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from services.node.api.auth import require_admin, require_reader
from services.node.errors import ApiError
from services.node.hardware.ops import Ops, get_ops
from services.node.hardware.power import PowerError

router = APIRouter()

# PowerError.kind → HTTP status and OpenAI-shaped error type.
_STATUS = {
    "invalid": (400, "invalid_request_error"),
    "unavailable": (503, "server_error"),
    "refused": (403, "permission_error"),
}


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: Literal["quiet", "normal", "max"]
    gpu: int | None = Field(None, ge=0, description="One GPU's index; unset: every GPU.")


def _ops(request: Request) -> Ops:
    return get_ops(request.app.state.node)


@router.get("/gpu", dependencies=[Depends(require_reader)])
async def gpu(request: Request) -> dict[str, Any]:
    ops = await run_in_threadpool(_ops, request)
    readings = await run_in_threadpool(ops.gpu.read)
    return {
        "gpus": None if readings is None else [r.model_dump() for r in readings],
        "reason": ops.gpu.reason,
        "driver": ops.gpu.driver,
    }


@router.get("/system", dependencies=[Depends(require_reader)])
async def system(request: Request) -> dict[str, Any]:
    ops = await run_in_threadpool(_ops, request)
    return asdict(await run_in_threadpool(ops.system.read))


@router.get("/power", dependencies=[Depends(require_reader)])
async def power(request: Request) -> dict[str, Any]:
    ops = await run_in_threadpool(_ops, request)
    state = await run_in_threadpool(ops.power.state)
    return {**state, "schedule_error": ops.schedule_error}


@router.post("/power/profile", dependencies=[Depends(require_admin)])
async def set_profile(body: ProfileRequest, request: Request) -> dict[str, Any]:
    ops = await run_in_threadpool(_ops, request)
    try:
        result = await run_in_threadpool(ops.power.apply, body.profile, gpu=body.gpu)
    except PowerError as exc:
        status, kind = _STATUS[exc.kind]
        raise ApiError(
            status, exc.reason, type=kind, param="profile", code=f"power_{exc.kind}"
        ) from None
    return result.as_dict()
