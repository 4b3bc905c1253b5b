"""The OpenAI-compatible HTTP API over a real server: shapes, errors, limits, batching."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.rig.node import RunningNode

HI = [{"role": "user", "content": "hi"}]


def post(node: RunningNode, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=60, **kwargs)


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_models_lists_the_active_model_with_the_header(node: RunningNode) -> None:
    r = httpx.get(f"{node.url}/v1/models")
    assert r.status_code == 200
    assert r.headers["X-Regime3-Model"] == "embedded-v1"
    assert [m["id"] for m in r.json()["data"]] == ["embedded-v1"]
    assert r.json()["data"][0]["object"] == "model"


def test_completion_shape_and_model_version(node: RunningNode) -> None:
    r = post(node, {"model": "embedded-v1", "messages": HI, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Regime3-Model"] == body["model"] == "embedded-v1"
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_an_unknown_model_is_a_404_model_not_found_and_no_model_is_the_active_one(
    node: RunningNode,
) -> None:
    r = post(node, {"model": "gpt-nonesuch", "messages": HI, "max_tokens": 3})
    assert r.status_code == 404
    error = error_of(r)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-nonesuch" in error["message"]
    for named in ({}, {"model": "active"}):  # no model, or the alias of whatever serves now
        r = post(node, {**named, "messages": HI, "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["model"] == "embedded-v1"


def test_retrieve_a_model_by_id(node: RunningNode) -> None:
    r = httpx.get(f"{node.url}/v1/models/embedded-v1")
    assert r.status_code == 200
    assert r.json()["id"] == "embedded-v1" and r.json()["object"] == "model"
    # Open to every client: no server path in it (the reader-gated GET /models has them).
    assert "path" not in r.json() and "path" not in httpx.get(f"{node.url}/v1/models").text
    # The alias is the active model itself, not an inactive model named "active".
    r = httpx.get(f"{node.url}/v1/models/active")
    assert r.status_code == 200 and r.json()["id"] == "embedded-v1"
    assert r.json().get("active") is not False
    r = httpx.get(f"{node.url}/v1/models/nonesuch")
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"


def sse_events(r: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]


def test_streaming_chunks_usage_and_done(node: RunningNode) -> None:
    body = {
        "messages": HI,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{node.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["X-Regime3-Model"] == "embedded-v1"
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "embedded-v1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 6
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    whole = post(node, {"messages": HI, "max_tokens": 6, "temperature": 0}).json()
    assert streamed == whole["choices"][0]["message"]["content"]


def test_streaming_without_usage_has_no_usage_chunk(node: RunningNode) -> None:
    body = {"messages": HI, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{node.url}/v1/chat/completions", json=body, timeout=60) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"messages": HI, "max_tokens": "many"}, "max_tokens"),
        ({"messages": HI, "temperature": 3}, "temperature"),
        ({"messages": HI, "top_p": 0}, "top_p"),
        ({"messages": HI, "n": 2}, "n"),
        ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": HI, "max_tokens": 100_000}, "max_tokens"),
        ({"messages": HI, "seed": 2**64}, "seed"),
        ([1, 2, 3], "body"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(node: RunningNode, body: Any, param: str) -> None:
    r = post(node, body)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_malformed_json_is_400(node: RunningNode) -> None:
    r = httpx.post(
        f"{node.url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert "JSON" in error_of(r)["message"]


def test_prompt_over_the_context_is_400(node: RunningNode) -> None:
    long = [{"role": "user", "content": "word " * 5000}]
    r = post(node, {"messages": long, "max_tokens": 10})
    assert r.status_code == 400
    assert "context" in error_of(r)["message"]


def test_message_count_limit(node_factory: Callable[..., RunningNode]) -> None:
    node = node_factory(node_max_messages=3)
    r = post(node, {"messages": HI * 4, "max_tokens": 1})
    assert r.status_code == 400
    assert "R3_NODE_MAX_MESSAGES" in error_of(r)["message"]


def test_body_size_limit_is_413(node_factory: Callable[..., RunningNode]) -> None:
    node = node_factory(node_max_body_bytes=4096)
    r = post(node, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413
    assert error_of(r)["code"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = httpx.post(
        f"{node.url}/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_unknown_route_and_method(node: RunningNode) -> None:
    r = httpx.get(f"{node.url}/v1/nothing")
    assert r.status_code == 404 and "/v1/nothing" in error_of(r)["message"]
    r = httpx.get(f"{node.url}/v1/chat/completions")
    assert r.status_code == 405 and error_of(r)["message"]


def test_unknown_openai_fields_are_ignored(node: RunningNode) -> None:
    body = {"messages": HI, "max_tokens": 2, "presence_penalty": 0.5, "user": "me"}
    assert post(node, body).status_code == 200


def test_stop_sequence_ends_the_completion(node: RunningNode) -> None:
    base = {"messages": HI, "max_tokens": 12, "temperature": 0}
    full = post(node, base).json()["choices"][0]["message"]["content"]
    stop = full[4:7]
    r = post(node, {**base, "stop": stop}).json()
    assert r["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_concurrent_http_requests_are_batched(node: RunningNode) -> None:
    before = node.state.engine.stats()

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=node.url, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/chat/completions",
                        json={"messages": HI, "max_tokens": 16, "seed": i},
                    )
                    for i in range(12)
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 12
    after = node.state.engine.stats()
    assert after.requests - before.requests == 12
    assert after.batches - before.batches < 12, (before, after)
    assert after.largest_batch > 1
