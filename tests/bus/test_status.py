from __future__ import annotations

import pytest
import redis

from bus import keys
from bus.status import StatusStore, TrainingStatus
from tests.bus.samples import B2_FIELDS


def test_status_round_trips_and_reads_plainly(r: redis.Redis) -> None:
    store = StatusStore(r)
    store.update(
        status="training",
        current_step=1500,
        total_steps=5000,
        loss=0.452,
        answer_matches=True,
        train_loss_history=[0.8, 0.65, 0.52],
        current_file="syllo_batch_001.jsonl",
    )
    raw = {k.decode(): v.decode() for k, v in r.hgetall(keys.STATUS_TRAINING).items()}
    assert raw["status"] == "training"
    assert raw["loss"] == "0.452"
    assert raw["answer_matches"] == "true"
    assert raw["train_loss_history"] == "[0.8,0.65,0.52]"
    got = store.read()
    assert got.current_step == 1500 and got.loss == 0.452 and got.answer_matches is True
    assert got.train_loss_history == [0.8, 0.65, 0.52]


def test_none_removes_a_field_and_defaults_return(r: redis.Redis) -> None:
    store = StatusStore(r)
    store.update(current_file="a.jsonl")
    store.update(current_file=None)
    assert b"current_file" not in r.hgetall(keys.STATUS_TRAINING)
    assert store.read().current_file is None


def test_every_seed_field_is_present_in_the_payload() -> None:
    assert set(B2_FIELDS) <= set(TrainingStatus().model_dump())


def test_bad_updates_are_refused_before_they_reach_redis(r: redis.Redis) -> None:
    store = StatusStore(r)
    with pytest.raises(ValueError, match="not TrainingStatus fields"):
        store.update(losss=1.0)
    with pytest.raises(ValueError):
        store.update(current_step="many")
    assert r.exists(keys.STATUS_TRAINING) == 0


def test_a_corrupt_field_is_dropped_on_read_not_fatal(r: redis.Redis) -> None:
    r.hset(keys.STATUS_TRAINING, mapping={"current_step": "oops", "loss": "0.5"})
    got = StatusStore(r).read()
    assert got.current_step == 0 and got.loss == 0.5
