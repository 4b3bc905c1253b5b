"""OpenAI-compatible routes: GET /v1/models and POST /v1/chat/completions (streaming too)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from codec.codebook import Codebook
from codec.errors import CodebookError
from services.node.api.auth import require_reader
from services.node.api.decoding import Regime3Options, decode_reply
from services.node.codebooks import model_codebook
from services.node.config import NodeSettings
from services.node.errors import (
    ApiError,
    EngineBusy,
    EngineClosed,
    PromptError,
    RegistryError,
)
from services.node.serving.engine import Finished, GenerationRequest, RequestHandle, TextDelta
from services.node.serving.thinking import ThinkingOptions, ThinkingRules
from services.node.state import NodeState

MODEL_HEADER = "X-Regime3-Model"

router = APIRouter(dependencies=[Depends(require_reader)])


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    # A string, or OpenAI's list of text parts (joined); images are not supported.
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields this node honours; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        None,
        description="A model this node knows (`active`, the active version, one still finishing "
        "requests, or a registered id); the active model answers and the response names it. "
        "Unknown: 404 model_not_found.",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    # torch's generator takes a 64-bit seed; a larger one is a 400, not a 500.
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    thinking: ThinkingOptions | None = Field(
        None, description="Thinking-marker rules for this request (extra body field)."
    )
    regime3: Regime3Options | None = Field(
        None,
        description='regime3\'s options (extra body field), e.g. {"decode": true}: the reply '
        "decoded to canonical form beside the raw text.",
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return value


def _limits(body: ChatCompletionRequest, settings: NodeSettings) -> int:
    if len(body.messages) > settings.node_max_messages:
        raise ApiError(
            400,
            f"messages: {len(body.messages)} messages, more than this node's limit of "
            f"{settings.node_max_messages} (R3_NODE_MAX_MESSAGES).",
            param="messages",
        )
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.node_default_max_tokens
    if max_tokens > settings.node_max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens: {max_tokens} is more than this node's limit of "
            f"{settings.node_max_tokens_limit} (R3_NODE_MAX_TOKENS_LIMIT).",
            param="max_tokens",
        )
    return max_tokens


def node_thinking_rules(settings: NodeSettings) -> ThinkingRules:
    return ThinkingRules(
        open_max=settings.think_open_max,
        close_min=settings.think_close_min,
        close_max=settings.think_close_max,
        max_tokens=settings.think_max_tokens,
    )


def _thinking(body: ChatCompletionRequest, settings: NodeSettings) -> ThinkingRules | None:
    options = body.thinking
    enabled = (
        settings.think_control if options is None or options.enabled is None else (options.enabled)
    )
    if not enabled:
        return None
    try:
        return ThinkingRules.resolve(node_thinking_rules(settings), options)
    except ValueError as exc:
        raise ApiError(400, f"thinking: {exc}", param="thinking") from exc


def generation_request(body: ChatCompletionRequest, settings: NodeSettings) -> GenerationRequest:
    """The engine's request for a validated API body (ApiError 400 past a limit)."""
    max_tokens = _limits(body, settings)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return GenerationRequest(
        messages=[{"role": m.role, "content": m.text()} for m in body.messages],
        max_tokens=max_tokens,
        temperature=(
            settings.node_default_temperature if body.temperature is None else body.temperature
        ),
        top_p=settings.node_default_top_p if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
        thinking=_thinking(body, settings),
    )


def _state(request: Request) -> NodeState:
    return request.app.state.node  # type: ignore[no-any-return]


def _model_object(state: NodeState) -> dict[str, Any]:
    active = state.engine.active
    return {
        "id": active.version,
        "object": "model",
        "created": int(time.time()),
        "owned_by": state.node_name,
        "step": active.step,
        # No server path here: this route is open to every client (GET /models, behind the
        # reader token, names where each registered model lives).
        "thinking_control": active.markers is not None,
        # The version of the codebook its code tokens mean (None: it carries none, and the
        # codec's default one decodes its output).
        "codebook": active.codebook.version if active.codebook is not None else None,
    }


def _model_not_found(name: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{name}` does not exist on this node; GET /v1/models lists the one it "
        "serves (or send no `model`: the active model answers).",
        param="model",
        code="model_not_found",
    )


# The name a client uses for "whatever this node serves now", since versions change with
# every hot swap and the official client must send some model.
ACTIVE_ALIAS = "active"


def _known(state: NodeState, name: str) -> bool:
    """The alias, the active version, a version finishing requests, or a registered id."""
    if name in (ACTIVE_ALIAS, state.engine.active.version) or name in state.engine.in_use():
        return True
    try:
        return name in state.registry.ids()
    except Exception:  # Redis away: what the engine knows is the answer
        return False


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = _state(request)
    data = [_model_object(state)]
    return JSONResponse({"object": "list", "data": data}, headers={MODEL_HEADER: data[0]["id"]})


def _registered_codebook(state: NodeState, model_id: str) -> Codebook | None:
    """The codebook `model_id`'s code tokens mean; None only when the model carries none.

    A version the engine holds (the active one, or one still finishing requests after a
    swap, which the registry may no longer list) answers with the codebook it was loaded
    with: its replies were decoded with that one, whatever its directory holds now. Any
    other model is read from its registry entry's directory. Unknown: 404. Redis away:
    503, never None, which would tell a client that the default codebook applies.
    """
    loaded = state.engine.loaded(model_id)
    if loaded is not None:
        return loaded.codebook
    try:
        entry = state.registry.get(model_id)
    except RegistryError as exc:
        raise _model_not_found(model_id) from exc
    except redis.RedisError as exc:
        raise ApiError(
            503,
            f"the codebook of model {model_id!r} cannot be read now: the model registry "
            f"(Redis) is unavailable ({type(exc).__name__}); retry when Redis is back.",
            type="server_error",
            param="model",
            code="registry_unavailable",
        ) from exc
    path = Path(entry.path).expanduser() if entry.path else state.settings.models_dir / entry.id
    try:
        return model_codebook(path)
    except CodebookError as exc:
        raise ApiError(
            409, f"model {model_id!r}: {exc}", param="model", code="codebook_invalid"
        ) from exc


# Declared before the catch-all `/v1/models/{model_id:path}` below, which would match it too.
@router.get("/v1/models/{model_id}/codebook")
async def model_codebook_route(model_id: str, request: Request) -> JSONResponse:
    """The codebook a model's code tokens mean, for clients that decode on their own (the
    node-worker renders and judges encoded data with it). `codebook` is null when the model
    carries none: the codec's default codebook (`codec.domains.default_codebook`) applies.
    A model it cannot tell about is an error, never null: 404 unknown, 503 Redis away."""
    state = _state(request)
    active = state.engine.active
    if model_id == ACTIVE_ALIAS:
        name, codebook = active.version, active.codebook
    else:
        name = model_id
        codebook = await run_in_threadpool(_registered_codebook, state, model_id)
    return JSONResponse(
        {
            "object": "codebook",
            "model": name,
            "version": codebook.version if codebook is not None else None,
            "codebook": codebook.to_json() if codebook is not None else None,
        },
        headers={MODEL_HEADER: active.version},
    )


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    """The official client's `models.retrieve`: the active model by its id; else 404."""
    state = _state(request)
    found = _model_object(state)
    if model_id not in (found["id"], ACTIVE_ALIAS):
        if not await run_in_threadpool(_known, state, model_id):
            raise _model_not_found(model_id)
        # Another model this node knows: the active one's step and markers are not its.
        codebook = await run_in_threadpool(_registered_codebook, state, model_id)
        found = {
            "id": model_id,
            "object": "model",
            "created": found["created"],
            "owned_by": found["owned_by"],
            "active": False,
            "codebook": codebook.version if codebook is not None else None,
        }
    return JSONResponse(found, headers={MODEL_HEADER: state.engine.active.version})


def _submit(state: NodeState, request: GenerationRequest, loop: Any) -> RequestHandle:
    try:
        return state.engine.submit(request, loop=loop)
    except PromptError as exc:
        raise ApiError(400, str(exc), param="messages", code="invalid_prompt") from exc
    except EngineBusy as exc:
        raise ApiError(503, str(exc), type="server_error", code="overloaded") from exc
    except EngineClosed as exc:
        raise ApiError(503, str(exc), type="server_error", code="shutting_down") from exc


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _finish_reason(finished: Finished) -> str:
    return "length" if finished.reason == "length" else "stop"


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    if body.model and not await run_in_threadpool(_known, state, body.model):
        raise _model_not_found(body.model)
    gen = generation_request(body, state.settings)
    # Off the event loop: the chat template and tokenizer take a while on a large body.
    handle = await run_in_threadpool(_submit, state, gen, asyncio.get_running_loop())
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    headers = {MODEL_HEADER: handle.version}
    decode = body.regime3 is not None and body.regime3.decode
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(handle, request, completion_id, created, include_usage, decode),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    # Nothing tells a non-streaming handler that its client hung up: watch for it, so an
    # abandoned request leaves its batch at the next step instead of running to the end.
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        finished = None
        async for event in handle.astream():
            if isinstance(event, Finished):
                finished = event
    except BaseException:
        handle.cancel()  # the handler was cancelled: free its batch row
        raise
    finally:
        watcher.cancel()
    assert finished is not None
    if finished.reason == "error":
        raise ApiError(
            503, f"generation failed: {finished.message}", type="server_error", code="engine_error"
        )
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": handle.version,
            "system_fingerprint": handle.version,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": finished.text,
                        **(_decoded(handle, finished) if decode else {}),
                    },
                    "logprobs": None,
                    "finish_reason": _finish_reason(finished),
                }
            ],
            "usage": _usage(finished),
        },
        headers=headers,
    )


async def _cancel_on_disconnect(request: Request, handle: RequestHandle) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


def _chunk(
    completion_id: str, created: int, version: str, choices: list[dict[str, Any]], **extra: Any
) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": version,
        "system_fingerprint": version,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _decoded(handle: RequestHandle, finished: Finished) -> dict[str, Any]:
    """The `regime3.decode` fields of a finished reply, decoded with its model's codebook."""
    return decode_reply(finished.text, handle.codebook)


async def _sse(
    handle: RequestHandle,
    request: Request,
    completion_id: str,
    created: int,
    usage: bool,
    decode: bool = False,
) -> AsyncIterator[str]:
    version = handle.version
    try:
        yield _chunk(
            completion_id,
            created,
            version,
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        )
        async for event in handle.astream():
            if isinstance(event, TextDelta):
                yield _chunk(
                    completion_id,
                    created,
                    version,
                    [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}],
                )
                continue
            if event.reason == "error":
                # Headers are gone already: report in-band, as OpenAI does mid-stream.
                error = ApiError(
                    503,
                    f"generation failed: {event.message}",
                    type="server_error",
                    code="engine_error",
                )
                yield f"data: {json.dumps(error.body())}\n\n"
                return
            yield _chunk(
                completion_id,
                created,
                version,
                [
                    {
                        "index": 0,
                        # The whole reply is known only now: its decoded form rides on the
                        # chunk that ends it.
                        "delta": _decoded(handle, event) if decode else {},
                        "finish_reason": _finish_reason(event),
                    }
                ],
            )
            if usage:
                yield _chunk(completion_id, created, version, [], usage=_usage(event))
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()  # a no-op once finished; frees the row if the client disconnected
