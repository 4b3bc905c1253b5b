"""The SSE fan-out under stress: a client that does not read is cut off with a resume cursor
while the others get everything; memory stays bounded; a disconnect frees its buffer."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from bus.events import TrainStep
from bus.publish import Publisher
from tests.gateway.rig import Gateway, SseReader

TIMEOUT = httpx.Timeout(15.0)
BUFFER = 256
BATCH = 100  # published at once; below BUFFER, so a client that reads keeps up
EVENTS = 20_000


def steps(start: int, n: int) -> list[TrainStep]:
    return [
        TrainStep(current_step=i, loss=0.5, learning_rate=1e-4, current_file="x" * 200)
        for i in range(start, start + n)
    ]


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # 20k events through a real gateway: ~20 s on this machine
def test_a_client_that_does_not_read_is_lagged_and_others_are_not(
    start_gateway: Callable[..., Gateway], r: redis.Redis
) -> None:
    # A long send timeout, so the stuck client is still connected to read its `lagged`.
    gw = start_gateway(R3_SSE_BUFFER_EVENTS=str(BUFFER), R3_SSE_SEND_TIMEOUT_SECONDS="120")
    pub = Publisher(r)
    url = gw.url + "/events?streams=training"
    fast_ids: list[str] = []

    def read_fast() -> None:
        with httpx.stream("GET", url, timeout=TIMEOUT) as resp:
            for frame in SseReader(resp):
                fast_ids.append(str(frame.data["entry_id"]))
                if len(fast_ids) == EVENTS:
                    return

    with httpx.Client(timeout=TIMEOUT) as slow_client:
        with slow_client.stream("GET", url) as slow:  # opened, then not read at all
            fast = threading.Thread(target=read_fast)
            fast.start()
            wait_for(lambda: gw.metrics()["r3_gateway_sse_clients"] == 2, 10, "two clients")
            rss_before = gw.rss_bytes()
            published: list[str] = []
            for start in range(0, EVENTS, BATCH):
                published += pub.publish_many(steps(start, BATCH))
                # The fast client reads as it goes: wait for it, as a live dashboard would.
                caught_up = functools.partial(
                    lambda n: len(fast_ids) >= n or not fast.is_alive(), len(published)
                )
                wait_for(caught_up, 10, "the reader")
                if start % (20 * BATCH) == 0:
                    # Memory bounded: never more than each client's buffer.
                    assert gw.metrics()["r3_gateway_sse_buffered_events"] <= 2 * BUFFER
            fast.join(timeout=60)
            assert not fast.is_alive(), "the fast client was held back"
            assert fast_ids == published, "the fast client missed or repeated events"
            wait_for(lambda: gw.metrics()["r3_gateway_sse_lagged_clients_total"] == 1, 10, "a lag")
            growth = gw.rss_bytes() - rss_before
            assert growth < 50 * (1 << 20), f"gateway RSS grew {growth} bytes"

            # The slow client now reads: what was already in flight, then `lagged`, then EOF.
            text = b"".join(slow.iter_raw()).decode()
        slow_ids = re.findall(r'"entry_id":"([0-9-]+)"', text)
        # `lagged` is the last frame; only a keep-alive comment may still follow it.
        match = re.search(r"event: lagged\ndata: (\{.*\})\n\n(?::[^\n]*\n\n)*$", text)
        assert match is not None, text[-500:]
        assert 0 < len(slow_ids) < EVENTS
        assert slow_ids == published[: len(slow_ids)]
        resume = httpx.Response(200, content=match.group(1)).json()["resume"]
        assert resume == f"training:{slow_ids[-1]}"

    # Resuming from the cursor it was given continues exactly after its last frame.
    with httpx.stream("GET", url, headers={"Last-Event-ID": resume}, timeout=TIMEOUT) as resp:
        rest = [str(f.data["entry_id"]) for f in SseReader(resp).take(100)]
    assert rest == published[len(slow_ids) : len(slow_ids) + 100]


def test_disconnect_frees_the_client(gateway: Gateway, r: redis.Redis) -> None:
    pub = Publisher(r)
    with httpx.Client(timeout=TIMEOUT) as client, contextlib.ExitStack() as streams:
        for _ in range(3):
            streams.enter_context(client.stream("GET", gateway.url + "/events"))
        wait_for(lambda: gateway.metrics()["r3_gateway_sse_clients"] == 3, 10, "three clients")
        pub.publish_many(steps(0, 50))  # unread: it sits in their buffers or sockets
        wait_for(
            lambda: gateway.metrics()["r3_gateway_sse_events_delivered_total"] == 150,
            10,
            "delivery",
        )
    wait_for(lambda: gateway.metrics()["r3_gateway_sse_clients"] == 0, 10, "clients gone")
    assert gateway.metrics()["r3_gateway_sse_buffered_events"] == 0
    assert httpx.get(gateway.url + "/healthz").json()["sse_clients"] == 0


def test_a_client_stuck_past_the_send_timeout_is_dropped(
    start_gateway: Callable[..., Gateway], r: redis.Redis
) -> None:
    gw = start_gateway(R3_SSE_BUFFER_EVENTS=str(BUFFER), R3_SSE_SEND_TIMEOUT_SECONDS="1")
    pub = Publisher(r)
    url = gw.url + "/events?streams=training"
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", url):  # never read
        wait_for(lambda: gw.metrics()["r3_gateway_sse_clients"] == 1, 10, "the client")
        for start in range(0, EVENTS, 1000):
            pub.publish_many(steps(start, 1000))
        wait_for(lambda: gw.metrics()["r3_gateway_sse_clients"] == 0, 20, "the drop")
    metrics = gw.metrics()
    assert metrics["r3_gateway_sse_lagged_clients_total"] == 1
    assert metrics["r3_gateway_sse_buffered_events"] == 0
