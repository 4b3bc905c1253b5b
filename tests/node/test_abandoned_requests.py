"""Clients that hang up and a node told to stop: nothing keeps generating for nobody."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import httpx

from tests.rig.node import RunningNode

LONG = {"messages": [{"role": "user", "content": "talk"}], "max_tokens": 3000, "seed": 1}


def endless(node: RunningNode) -> None:
    """Serve the same weights without stop tokens: every request runs to its max_tokens."""
    engine = node.state.engine
    engine.swap(dataclasses.replace(engine.active, eos_ids=frozenset()))


def generating(node: RunningNode) -> int:
    return sum(node.state.engine.in_use().values())


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def hang_up_after(node: RunningNode, seconds: float, *, stream: bool) -> None:
    """A real HTTP client that gives up: its connection is closed after `seconds`."""
    url = f"{node.url}/v1/chat/completions"
    with httpx.Client(timeout=seconds) as client:
        if stream:
            deadline = time.monotonic() + seconds
            with client.stream("POST", url, json={**LONG, "stream": True}) as r:
                for line in r.iter_lines():
                    assert "[DONE]" not in line, "the stream ended before its client hung up"
                    if time.monotonic() > deadline:
                        return  # leaving the block closes the connection mid-stream
            return
        try:
            r = client.post(url, json=LONG)
        except httpx.TimeoutException:
            return
        raise AssertionError(f"the request ended before its client hung up: {r.status_code}")


def test_abandoned_requests_are_cancelled_within_a_second_streaming_or_not(
    node: RunningNode,
) -> None:
    endless(node)
    clients = [
        threading.Thread(target=hang_up_after, args=(node, 1.0), kwargs={"stream": i % 2 == 0})
        for i in range(8)
    ]
    for c in clients:
        c.start()
    wait_until(lambda: generating(node) == 8, timeout=30)
    for c in clients:
        c.join(timeout=30)
    hung_up = time.monotonic()
    before = node.state.engine.stats().tokens_generated
    # Every row leaves its batch at the next step once its client is gone.
    waited = wait_until(lambda: generating(node) == 0, timeout=5)
    assert time.monotonic() - hung_up < 1.5, waited
    # And the node is free for the next client at once (the rows were 3,000 tokens long).
    r = httpx.post(
        f"{node.url}/v1/chat/completions",
        json={"messages": LONG["messages"], "max_tokens": 16},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    assert node.state.engine.stats().tokens_generated - before < 8 * 3000 // 4


def test_shutdown_ends_long_requests_within_its_drain_bound(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory(node_drain_seconds=1.0)
    endless(node)
    answers: list[object] = []

    def patient_client() -> None:
        try:
            answers.append(httpx.post(f"{node.url}/v1/chat/completions", json=LONG, timeout=60))
        except httpx.HTTPError as err:  # the connection closed under it: also an answer
            answers.append(err)

    clients = [threading.Thread(target=patient_client) for _ in range(4)]
    for c in clients:
        c.start()
    wait_until(lambda: generating(node) == 4, timeout=30)
    started = time.monotonic()
    node.stop()
    assert not node.thread.is_alive()
    assert time.monotonic() - started < 1.0 + 5.0
    for c in clients:
        c.join(timeout=10)
    assert len(answers) == 4  # nobody left hanging
    assert generating(node) == 0
