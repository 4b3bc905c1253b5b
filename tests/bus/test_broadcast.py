from __future__ import annotations

import threading
import time

import redis

from bus import keys
from bus.broadcast import EARLIEST, LATEST, BroadcastReader
from bus.events import Alert, TrainStep
from bus.publish import Publisher


def step(i: int) -> TrainStep:
    return TrainStep(current_step=i, loss=1.0, learning_rate=1e-3)


def test_resume_from_an_id_has_no_gap_and_no_duplicate(r: redis.Redis) -> None:
    pub = Publisher(r)
    pub.publish_many(step(i) for i in range(10))
    first = BroadcastReader(r, {keys.STREAM_TRAINING: EARLIEST}, count=4)
    seen = [d.event.current_step for d in first.read(block_ms=0)]
    assert seen == [0, 1, 2, 3]
    resume_at = first.positions[keys.STREAM_TRAINING]
    # The reader "disconnects"; more arrives while it is away.
    pub.publish_many(step(i) for i in range(10, 15))
    second = BroadcastReader(r, {keys.STREAM_TRAINING: resume_at}, count=1000)
    seen += [d.event.current_step for d in second.read(block_ms=0)]
    assert seen == list(range(15))


def test_latest_is_pinned_at_start_so_nothing_between_reads_is_lost(r: redis.Redis) -> None:
    pub = Publisher(r)
    pub.publish(step(0))
    reader = BroadcastReader(r, {keys.STREAM_TRAINING: LATEST})
    pub.publish(step(1))  # after the reader was made, before its first read
    assert [d.event.current_step for d in reader.read(block_ms=0)] == [1]


def test_blocking_read_wakes_on_publish(r: redis.Redis, redis_url: str) -> None:
    reader = BroadcastReader(r, {keys.STREAM_ALERTS: LATEST}, block_ms=5_000)
    other = Publisher(redis.Redis.from_url(redis_url))
    alert = Alert(level="info", source="test", code="hello", message="hi")
    timer = threading.Timer(0.2, lambda: other.publish(alert))
    t0 = time.monotonic()
    timer.start()
    got = reader.read()
    assert [d.event.code for d in got] == ["hello"]
    assert time.monotonic() - t0 < 2.0


def test_malformed_entries_are_dead_lettered_and_the_reader_goes_on(r: redis.Redis) -> None:
    pub = Publisher(r)
    pub.publish(step(1))
    bad_ids = [
        r.xadd(keys.STREAM_TRAINING, {"type": "train.nonsense", "v": "1"}).decode(),
        r.xadd(keys.STREAM_TRAINING, {"type": "train.step", "v": "1", "loss": "x"}).decode(),
        r.xadd(
            keys.STREAM_TRAINING,
            {
                "type": "train.step",
                "v": "99",
                "current_step": "1",
                "loss": "1",
                "learning_rate": "1",
            },
        ).decode(),
        r.xadd(keys.STREAM_TRAINING, {"no": "type"}).decode(),
    ]
    pub.publish(step(2))
    a = BroadcastReader(r, {keys.STREAM_TRAINING: EARLIEST})
    b = BroadcastReader(r, {keys.STREAM_TRAINING: EARLIEST})
    assert [d.event.current_step for d in a.read(block_ms=0)] == [1, 2]
    assert [d.event.current_step for d in b.read(block_ms=0)] == [1, 2]
    letters = BroadcastReader(r, {keys.STREAM_DEADLETTER: EARLIEST}).read(block_ms=0)
    # Two readers met each bad entry; each is dead-lettered exactly once.
    assert [d.event.source_id for d in letters] == bad_ids
    reasons = [d.event.error for d in letters]
    assert "unknown event type 'train.nonsense'" in reasons[0]
    assert "current_step" in reasons[1] and "loss" in reasons[1]
    assert "newer than this reader" in reasons[2]
    assert "no `type`" in reasons[3]
    assert letters[0].event.entry == {"type": "train.nonsense", "v": "1"}


def test_trimming_keeps_a_stream_bounded(r: redis.Redis, monkeypatch) -> None:
    from bus.settings import get_bus_settings

    monkeypatch.setenv("R3_STREAM_MAXLEN_OVERRIDES", '{"alerts": 1000}')
    get_bus_settings.cache_clear()
    pub = Publisher(r)
    for _ in range(10):
        pub.publish_many(
            Alert(level="info", source="t", code="c", message=str(i)) for i in range(1000)
        )
    length = r.xlen(keys.STREAM_ALERTS)
    # Approximate trimming works in whole macro nodes (100 entries by default).
    assert 1000 <= length <= 1200, length


def test_a_client_that_decodes_responses_reads_and_dead_letters_too(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    Publisher(r).publish(step(7))
    bad = r.xadd(keys.STREAM_TRAINING, {"type": "nope"})
    reader = BroadcastReader(r, {keys.STREAM_TRAINING: EARLIEST})
    assert [d.event.current_step for d in reader.read(block_ms=0)] == [7]
    [letter] = BroadcastReader(r, {keys.STREAM_DEADLETTER: EARLIEST}).read(block_ms=0)
    assert letter.event.source_id == bad
    assert (
        BroadcastReader(r, {keys.STREAM_TRAINING: LATEST}).positions[keys.STREAM_TRAINING]
        == reader.positions[keys.STREAM_TRAINING]
    )


def test_a_cap_for_an_unknown_stream_is_refused(r: redis.Redis, monkeypatch) -> None:
    import pytest

    from bus.settings import get_bus_settings

    monkeypatch.setenv("R3_STREAM_MAXLEN_OVERRIDES", '{"telemetery": 10}')
    get_bus_settings.cache_clear()
    with pytest.raises(ValueError, match=r"unknown streams \['telemetery'\]"):
        Publisher(r)
