"""Registry routes, compatible with the users' node: register, set_active, list, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.events import ModelSwapFailed
from codec.errors import CodebookError
from services.model.errors import ModelNotFoundError
from services.model.loading import check_model_dir
from services.node.api.auth import require_admin, require_reader
from services.node.codebooks import model_codebook
from services.node.errors import (
    ActiveModelDeleteError,
    ApiError,
    ModelLoadError,
    RegistryError,
    UnknownModelError,
)
from services.node.pulling.activation import activate
from services.node.pulling.registry import ModelEntry
from services.node.state import NodeState

router = APIRouter()


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    path: str | None = Field(None, max_length=4096)
    url: str | None = Field(None, max_length=4096)
    source: str = Field("manual", max_length=128)
    step: int | None = Field(None, ge=0)


class SetActiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)


B = TypeVar("B", bound=BaseModel)


async def _json_body(request: Request, model: type[B]) -> B:
    """The body as JSON whatever its Content-Type: the users' scripts call these routes with
    `curl -d '{...}'`, which says application/x-www-form-urlencoded."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        raise ApiError(
            400,
            f'{where}: {error["msg"]} (send a JSON object, e.g. {{"id": "ck1"}})',
            param=where,
        ) from exc


def _state(request: Request) -> NodeState:
    return request.app.state.node  # type: ignore[no-any-return]


def _registry_error(exc: RegistryError) -> ApiError:
    if isinstance(exc, UnknownModelError):
        return ApiError(404, str(exc), param="id", code="model_not_found")
    if isinstance(exc, ActiveModelDeleteError):
        return ApiError(409, str(exc), param="id", code="model_active")
    return ApiError(400, str(exc), param="id")


@router.post("/models/register", dependencies=[Depends(require_admin)])
async def register(request: Request) -> dict[str, Any]:
    body = await _json_body(request, RegisterBody)
    state = _state(request)
    path = body.path
    if body.url is None:
        # A local model must be complete now, not fail later at set_active.
        where = Path(path).expanduser() if path else state.settings.models_dir / body.id
        try:
            check_model_dir(where)
        except ModelNotFoundError as exc:
            raise ApiError(400, str(exc), param="path", code="model_files_missing") from exc
        path = str(where)
    try:
        entry = state.registry.register(
            body.id, path=path, url=body.url, source=body.source, step=body.step
        )
    except RegistryError as exc:
        raise _registry_error(exc) from exc
    return {"status": "registered", "model": entry.model_dump(mode="json")}


@router.post("/models/set_active", dependencies=[Depends(require_admin)])
async def set_active(request: Request) -> dict[str, Any]:
    body = await _json_body(request, SetActiveBody)
    state = _state(request)
    try:
        swapped = await run_in_threadpool(activate, state, body.id, by="manual")
    except RegistryError as exc:
        raise _registry_error(exc) from exc
    except ModelLoadError as exc:
        serving = state.engine.active.version
        state.publisher.publish(
            ModelSwapFailed(
                node=state.node_name,
                checkpoint_id=body.id,
                reason=exc.reason,
                serving_model_id=serving,
            )
        )
        status = 503 if exc.kind == "out_of_memory" else 400
        raise ApiError(
            status,
            f"{exc}. Still serving {serving!r}.",
            type="server_error" if status == 503 else "invalid_request_error",
            param="id",
            code=f"model_load_{exc.kind}",
        ) from exc
    return {
        "status": "active",
        "model_id": swapped.model_id,
        "previous_model_id": swapped.previous_model_id,
        "load_seconds": round(swapped.load_seconds, 3),
        "swap_seconds": round(swapped.swap_seconds, 6),
    }


def _codebook_fields(state: NodeState, entry: ModelEntry) -> dict[str, str | None]:
    """`codebook`: the version of the codebook in the model's directory (None: it has none,
    or it is not on this node yet); `codebook_error` when the file there cannot be read."""
    path = Path(entry.path).expanduser() if entry.path else state.settings.models_dir / entry.id
    try:
        codebook = model_codebook(path)
    except CodebookError as exc:
        return {"codebook": None, "codebook_error": str(exc)}
    return {"codebook": codebook.version if codebook is not None else None}


def _listing(state: NodeState) -> dict[str, Any]:
    active = state.registry.active_id()
    in_use = state.engine.in_use()
    return {
        "active": active,
        "serving": state.engine.active.version,
        "models": [
            {
                **entry.model_dump(mode="json"),
                "active": entry.id == active,
                "requests_in_flight": in_use.get(entry.id, 0),
                **_codebook_fields(state, entry),
            }
            for entry in state.registry.list()
        ],
    }


@router.get("/models", dependencies=[Depends(require_reader)])
async def list_models(request: Request) -> dict[str, Any]:
    # Off the event loop: each entry's codebook file is read (once per version on disk).
    return await run_in_threadpool(_listing, _state(request))


@router.delete("/models/{model_id}", dependencies=[Depends(require_admin)])
async def delete_model(model_id: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    try:
        entry = state.registry.delete(model_id)
    except RegistryError as exc:
        raise _registry_error(exc) from exc
    return {
        "status": "deleted",
        "model": entry.model_dump(mode="json"),
        "note": "removed from the registry; its files, if any, are left on disk",
    }
