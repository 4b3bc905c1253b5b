"""GET /events on a real gateway and Redis: frames, resume without gap or duplicate (across a
restart, and while events keep arriving), keep-alive, bad parameters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from bus.events import Alert, TrainStep
from bus.publish import Publisher
from services.gateway import cursor
from tests.gateway.rig import Gateway, SseReader

TIMEOUT = httpx.Timeout(10.0)


def step(n: int) -> TrainStep:
    return TrainStep(current_step=n, loss=1.0 / (n + 1), learning_rate=1e-4)


def alert(n: int) -> Alert:
    return Alert(level="info", source="test", code="t", message=f"alert {n}")


def test_frames_carry_type_stream_entry_id_and_a_cursor(gateway: Gateway, r: redis.Redis) -> None:
    pub = Publisher(r)
    with httpx.stream(
        "GET", gateway.url + "/events?streams=training,alerts", timeout=TIMEOUT
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        time.sleep(0.3)  # the stream is live from here; earlier events are not replayed
        step_id = pub.publish(step(7))
        alert_id = pub.publish(alert(1))
        frames = SseReader(resp).take(2)
    # Live, each stream has its own reader: order holds within a stream, not across them.
    last_id = frames[-1].id
    first, second = sorted(frames, key=lambda f: f.event, reverse=True)
    assert [first.event, second.event] == ["train.step", "alert"]
    assert first.data["stream"] == "training" and first.data["entry_id"] == step_id
    assert first.data["type"] == "train.step" and first.data["current_step"] == 7
    assert {"time", "host", "run_id", "loss", "learning_rate"} <= first.data.keys()
    assert second.data["stream"] == "alerts" and second.data["entry_id"] == alert_id
    assert first.id is not None and second.id is not None and last_id is not None
    assert cursor.parse(last_id, ["training", "alerts"]) == {
        "training": step_id,
        "alerts": alert_id,
    }


def per_stream(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for stream, entry_id in pairs:
        out.setdefault(stream, []).append(entry_id)
    return out


def test_resume_after_restart_has_no_gap_and_no_duplicate(gateway: Gateway, r: redis.Redis) -> None:
    pub = Publisher(r)

    def publish(i: int, stream: str) -> tuple[str, str]:
        return stream, pub.publish(step(i) if stream == "training" else alert(i))

    published = [publish(i, "training" if i % 2 else "alerts") for i in range(6)]
    url = gateway.url + "/events?streams=training,alerts&since=0"
    with httpx.stream("GET", url, timeout=TIMEOUT) as resp:
        first = SseReader(resp).take(3)

    published += [publish(i, "training" if i % 3 else "alerts") for i in range(6, 10)]
    gateway.restart()
    # The browser's EventSource sends Last-Event-ID on reconnect; it wins over ?since=0.
    headers = {"Last-Event-ID": str(first[-1].id)}
    with httpx.stream("GET", url, headers=headers, timeout=TIMEOUT) as resp:
        reader = SseReader(resp)
        rest = reader.take(7)
        published += [publish(11, "alerts"), publish(12, "training")]
        rest += reader.take(2)  # live now: history and live joined without a seam
    got = [(str(f.data["stream"]), str(f.data["entry_id"])) for f in first + rest]
    # Each stream complete and in order; across streams, order may differ by a tie or a
    # reader thread, which the cursor makes harmless.
    assert per_stream(got) == per_stream(published)
    assert len(got) == len(set(got)) == 12


@pytest.mark.parametrize("via", ["header", "query"])
def test_resume_while_events_keep_arriving(gateway: Gateway, r: redis.Redis, via: str) -> None:
    """A client resumes while a publisher runs flat out: the switch from catch-up to the
    live feed neither drops nor repeats an entry, in any stream."""
    pub = Publisher(r)
    first_id = pub.publish(step(0))
    stop = threading.Event()
    sent: dict[str, list[str]] = {"training": [], "alerts": []}

    def publish() -> None:
        n = 1
        while not stop.is_set() and n < 4000:
            batch = [step(n + i) if i % 4 else alert(n + i) for i in range(20)]
            for event, entry_id in zip(batch, pub.publish_many(batch), strict=True):
                sent["alerts" if event.type == "alert" else "training"].append(entry_id)
            n += 20
            time.sleep(0.002)

    worker = threading.Thread(target=publish)
    worker.start()
    got: dict[str, list[str]] = {"training": [], "alerts": []}
    try:
        time.sleep(0.3)
        url = gateway.url + "/events?streams=training,alerts"
        if via == "header":
            # alerts is not in this cursor, so it starts live: only training is compared.
            opts: dict[str, object] = {"headers": {"Last-Event-ID": f"training:{first_id}"}}
        else:
            opts = {"params": {"since": first_id}}
        with httpx.stream("GET", url, timeout=TIMEOUT, **opts) as resp:  # type: ignore[arg-type]
            for n, frame in enumerate(SseReader(resp), start=1):
                got[str(frame.data["stream"])].append(str(frame.data["entry_id"]))
                if n >= 1500:
                    break
    finally:
        stop.set()
        worker.join()
    compared = ["training"] if via == "header" else ["training", "alerts"]

    def after_first(entry_id: str) -> bool:
        # `since` is one id for every stream: an alert published in the same millisecond as
        # step 0, with a sequence number not above its, is before the cursor (not a gap).
        ms, seq = (int(x) for x in entry_id.split("-"))
        first_ms, first_seq = (int(x) for x in first_id.split("-"))
        return (ms, seq) > (first_ms, first_seq)

    for stream in compared:
        expected = [e for e in sent[stream] if after_first(e)]
        assert len(got[stream]) == len(set(got[stream])), f"a duplicate in {stream}"
        assert got[stream] == expected[: len(got[stream])], f"a gap in {stream}"
    assert len(got["training"]) > 500


def test_keep_alive_pings_on_an_idle_stream(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(R3_SSE_PING_SECONDS="0.2")
    with httpx.stream("GET", gw.url + "/events?streams=alerts", timeout=TIMEOUT) as resp:
        lines = resp.iter_lines()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if next(lines).startswith(":"):
                return
    pytest.fail("no keep-alive comment within 5 s at a 0.2 s ping interval")


def test_bad_parameters_are_refused_with_a_reason(gateway: Gateway) -> None:
    resp = httpx.get(gateway.url + "/events?streams=training,nope", timeout=5)
    assert resp.status_code == 400 and "nope" in resp.json()["error"]
    resp = httpx.get(gateway.url + "/events", params={"since": "training:abc"}, timeout=5)
    assert resp.status_code == 400 and "entry id" in resp.json()["error"]
