from __future__ import annotations

import time

import redis

from bus import keys
from bus.broadcast import EARLIEST, BroadcastReader
from bus.events import CheckpointReady, Event
from bus.publish import Publisher
from bus.workgroup import WorkGroup

STREAM = keys.STREAM_CHECKPOINTS
GROUP = keys.GROUP_NODE_CHECKPOINTS


def ready(step: int) -> CheckpointReady:
    return CheckpointReady(
        checkpoint_id=f"step-{step}",
        step=step,
        manifest_sha256="0" * 64,
        size_bytes=1,
        files=1,
    )


def group(r: redis.Redis, consumer: str, handler, **kw) -> WorkGroup:
    kw.setdefault("reclaim_idle_ms", 100)
    kw.setdefault("max_deliveries", 3)
    return WorkGroup(
        r,
        stream=STREAM,
        group=GROUP,
        consumer=consumer,
        handler=handler,
        start_id="0",
        block_ms=50,
        **kw,
    )


def dead_letters(r: redis.Redis) -> list[Event]:
    return [d.event for d in BroadcastReader(r, {keys.STREAM_DEADLETTER: EARLIEST}).read(0)]


def test_an_entry_left_by_a_dead_consumer_is_reclaimed_and_handled_once(r: redis.Redis):
    handled: list[tuple[str, int]] = []
    alive = group(r, "node-b", lambda e, i: handled.append((e.checkpoint_id, e.step)))
    Publisher(r).publish(ready(1))
    # node-a takes the entry and dies before XACK: it never handles it.
    r.xreadgroup(GROUP, "node-a", {STREAM: ">"}, count=1)
    assert alive.run_once(block_ms=1) == []  # not idle long enough to reclaim yet
    time.sleep(0.15)
    outcomes = alive.run_once()
    assert [(o.result, o.deliveries) for o in outcomes] == [("acked", 2)]
    for _ in range(3):
        time.sleep(0.12)
        alive.run_once(block_ms=1)
    assert handled == [("step-1", 1)]
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_ack_only_after_the_handler_succeeded(r: redis.Redis) -> None:
    calls = []

    def flaky(event: Event, entry_id: str) -> None:
        calls.append(entry_id)
        if len(calls) == 1:
            raise OSError("download interrupted")

    g = group(r, "n1", flaky)
    Publisher(r).publish(ready(2))
    assert [o.result for o in g.run_once()] == ["failed"]
    assert r.xpending(STREAM, GROUP)["pending"] == 1
    time.sleep(0.15)
    assert [o.result for o in g.run_once()] == ["acked"]
    assert len(calls) == 2 and calls[0] == calls[1]
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert dead_letters(r) == []


def test_dead_letter_after_max_deliveries(r: redis.Redis) -> None:
    def broken(event: Event, entry_id: str) -> None:
        raise ValueError("sha256 mismatch in model.safetensors")

    g = group(r, "n1", broken, max_deliveries=3)
    entry_id = Publisher(r).publish(ready(3))
    results = [o.result for o in g.run_once()]
    for _ in range(2):
        time.sleep(0.15)
        results += [o.result for o in g.run_once()]
    assert results == ["failed", "failed", "dead-lettered"]
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    [letter] = dead_letters(r)
    assert letter.source_id == entry_id and letter.deliveries == 3
    assert letter.error == "ValueError: sha256 mismatch in model.safetensors"
    assert letter.group == GROUP


def test_malformed_entry_in_a_group_is_dead_lettered_and_the_group_goes_on(r: redis.Redis):
    handled = []
    g = group(r, "n1", lambda e, i: handled.append(e.step))
    bad = r.xadd(STREAM, {"type": "checkpoint.ready", "v": "1", "step": "seven"}).decode()
    Publisher(r).publish(ready(4))
    assert [o.result for o in g.run_once()] == ["dead-lettered", "acked"]
    assert handled == [4]
    [letter] = dead_letters(r)
    assert letter.source_id == bad and "step" in letter.error
