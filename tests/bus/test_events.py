from __future__ import annotations

import pytest
import redis

from bus.broadcast import EARLIEST, BroadcastReader
from bus.encoding import from_fields, to_fields
from bus.events import EVENT_TYPES, TrainStep
from bus.publish import Publisher
from tests.bus.samples import SAMPLES


def test_every_event_type_has_a_sample() -> None:
    assert {type(s).TYPE for s in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.TYPE)
def test_every_event_round_trips_through_a_stream(r: redis.Redis, event) -> None:
    entry_id = Publisher(r).publish(event)
    [(got_id, raw)] = r.xrange(event.STREAM, min=entry_id, max=entry_id)
    back = from_fields(raw)
    assert got_id.decode() == entry_id
    assert back.model_dump(exclude={"host", "run_id"}) == event.model_dump(
        exclude={"host", "run_id"}
    )
    assert back.host and back.run_id  # stamped by the publisher


def test_entries_read_plainly_in_redis_cli(r: redis.Redis) -> None:
    Publisher(r).publish(SAMPLES[0])
    Publisher(r).publish(SAMPLES[1])
    fields = [
        {k.decode(): v.decode() for k, v in raw.items()}
        for _, raw in r.xrange("r3:stream:training")
    ]
    assert fields[0]["type"] == "train.step"
    assert fields[0]["v"] == "1"
    assert fields[0]["loss"] == "0.452"
    assert fields[0]["current_file"] == "syllo_batch_001.jsonl"
    assert "grad_norm" in fields[0] and "micro_batch" not in fields[0]  # None is left out
    assert fields[1]["answer_matches"] == "true"


def test_nested_data_is_json() -> None:
    fields = to_fields(SAMPLES[2])
    assert fields["layer_activity_summary"] == ('{"layers.0":{"grad_norm":0.1,"update_norm":0.01}}')


def test_type_and_version_describe_the_class_whatever_the_caller_says() -> None:
    e = TrainStep(type="evil", current_step=1, loss=1.0, learning_rate=1e-3)
    assert e.type == "train.step" and e.v == TrainStep.VERSION


def test_broadcast_reader_sees_published_events_in_order(r: redis.Redis) -> None:
    pub = Publisher(r)
    ids = pub.publish_many(
        TrainStep(current_step=i, loss=1.0 / (i + 1), learning_rate=1e-3) for i in range(20)
    )
    reader = BroadcastReader(r, {"r3:stream:training": EARLIEST}, block_ms=100)
    got = reader.read()
    assert [d.entry_id for d in got] == ids
    assert [d.event.current_step for d in got] == list(range(20))


def test_publish_many_returns_ids_in_order_and_leaves_the_connection_clean(
    r: redis.Redis,
) -> None:
    pub = Publisher(r)
    ids = pub.publish_many(
        TrainStep(current_step=i, loss=0.5, learning_rate=1e-3) for i in range(500)
    )
    got = [(eid.decode(), int(f[b"current_step"])) for eid, f in r.xrange("r3:stream:training")]
    assert got == [(eid, i) for i, eid in enumerate(ids)]
    assert pub.publish_many([]) == []
    # The pooled connection is clean: an ordinary command right after reads its own reply.
    assert r.ping() is True and r.xlen("r3:stream:training") == 500


def test_a_failed_batch_drops_its_connection(r: redis.Redis) -> None:
    from bus.events import Alert

    r.set("r3:stream:alerts", "not a stream")  # every XADD in the batch will be refused
    pub = Publisher(r)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pub.publish_many(Alert(level="info", source="t", code="c", message=str(i))
                         for i in range(3))
    assert r.get("r3:stream:alerts") == b"not a stream"  # no stray replies: this one is ours
