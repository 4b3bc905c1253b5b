"""The official `openai` Python client against a running node, streaming and not."""

from __future__ import annotations

import openai
import pytest

from tests.rig.node import RunningNode

HI = [{"role": "user", "content": "hi"}]


def client(node: RunningNode) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_completion(node: RunningNode) -> None:
    c = client(node)
    assert [m.id for m in c.models.list()] == ["embedded-v1"]
    assert c.models.retrieve("embedded-v1").id == "embedded-v1"
    raw = c.chat.completions.with_raw_response.create(
        model="embedded-v1",
        messages=HI,
        max_tokens=8,
        temperature=0,
        seed=3,  # type: ignore[arg-type]
    )
    assert raw.headers["X-Regime3-Model"] == "embedded-v1"
    completion = raw.parse()
    assert completion.model == "embedded-v1"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 8


def test_streaming_with_usage_matches_the_whole_completion(node: RunningNode) -> None:
    c = client(node)
    stream = c.chat.completions.create(
        model="embedded-v1",
        messages=HI,  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.model == "embedded-v1"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    whole = c.chat.completions.create(
        model="embedded-v1",
        messages=HI,
        max_tokens=10,
        temperature=0,  # type: ignore[arg-type]
    )
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_thinking_options_pass_as_extra_body(node: RunningNode) -> None:
    c = client(node)
    completion = c.chat.completions.create(
        model="embedded-v1",
        messages=HI,  # type: ignore[arg-type]
        max_tokens=4,
        extra_body={"thinking": {"open_max": 2, "max_tokens": 8}},
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(
            model="embedded-v1",
            messages=HI,  # type: ignore[arg-type]
            extra_body={"thinking": {"close_min": 5, "close_max": 3}},
        )
    assert caught.value.body["param"] == "thinking"  # type: ignore[index]


def test_errors_raise_the_clients_typed_exceptions(node: RunningNode) -> None:
    c = client(node)
    with pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="x", messages=[], max_tokens=3)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model="x", messages=HI, temperature=5)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="x", prompt="legacy completions are not served")


def test_protected_node_needs_the_api_key(node_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(node_protect_reads=True, node_api_token="reader-token")
    with pytest.raises(openai.AuthenticationError):
        client(node).models.list()
    good = openai.OpenAI(base_url=f"{node.url}/v1", api_key="reader-token", max_retries=0)
    assert [m.id for m in good.models.list()] == ["embedded-v1"]


def test_an_unknown_model_is_not_found_as_openai_says(node: RunningNode) -> None:
    c = client(node)
    with pytest.raises(openai.NotFoundError) as raised:
        c.models.retrieve("gpt-nonesuch")
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as raised:
        c.chat.completions.create(model="gpt-nonesuch", messages=HI, max_tokens=3)  # type: ignore[arg-type]
    assert raised.value.code == "model_not_found"
