"""activate(): load beside, warm up, swap, publish; a failure changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus import keys
from bus.encoding import from_fields
from bus.events import Event, ModelActivated, ModelSwapped
from bus.publish import Publisher
from services.node.config import NodeSettings
from services.node.errors import ModelLoadError, UnknownModelError
from services.node.pulling.activation import activate
from services.node.pulling.registry import Registry
from services.node.serving.engine import Engine, GenerationRequest
from services.node.serving.loading import load_for_serving
from services.node.state import NodeState
from tests.rig.node import save_model_variant


@pytest.fixture
def state(r: redis.Redis, embedded_dir: Path, tmp_path: Path) -> Iterator[NodeState]:
    settings = NodeSettings(node_device="cpu", data_dir=tmp_path)
    registry = Registry(r, "n1")
    registry.register("embedded-v1", path=str(embedded_dir))
    registry.set_active("embedded-v1")
    engine = Engine(load_for_serving(embedded_dir, "embedded-v1", settings))
    yield NodeState(settings, r, engine, registry, Publisher(r), "n1")
    engine.close()


def published(r: redis.Redis) -> list[Event]:
    return [from_fields(raw) for _, raw in r.xrange(keys.STREAM_MODELS)]


def test_activate_swaps_and_publishes(
    state: NodeState, r: redis.Redis, nudged_model_dir: Path
) -> None:
    state.registry.register("ckpt-7", path=str(nudged_model_dir), source="trainer", step=7)
    swapped = activate(state, "ckpt-7", by="auto", bytes=1234, download_seconds=0.5)
    assert state.engine.active.version == "ckpt-7" and state.engine.active.step == 7
    assert state.registry.active_id() == "ckpt-7"
    assert swapped.load_seconds > 0 and 0 <= swapped.swap_seconds < swapped.load_seconds
    events = published(r)
    assert [type(e) for e in events] == [ModelSwapped, ModelActivated]
    event = events[0]
    assert isinstance(event, ModelSwapped)
    assert (event.model_id, event.previous_model_id, event.step) == ("ckpt-7", "embedded-v1", 7)
    assert (event.bytes, event.download_seconds, event.node) == (1234, 0.5, "n1")
    assert isinstance(events[1], ModelActivated) and events[1].by == "auto"
    done = state.engine.submit(GenerationRequest(messages=[{"role": "user", "content": "x"}]))
    assert done.result(timeout=60).version == "ckpt-7"


def test_unknown_model(state: NodeState) -> None:
    with pytest.raises(UnknownModelError):
        activate(state, "nope")


def _assert_unchanged(state: NodeState, r: redis.Redis) -> None:
    assert state.engine.active.version == "embedded-v1"
    assert state.registry.active_id() == "embedded-v1"
    assert published(r) == []


def test_missing_files_change_nothing(state: NodeState, r: redis.Redis, tmp_path: Path) -> None:
    state.registry.register("gone", path=str(tmp_path / "gone"))
    with pytest.raises(ModelLoadError) as caught:
        activate(state, "gone")
    assert caught.value.kind == "missing"
    _assert_unchanged(state, r)


def test_weights_that_produce_nan_are_refused_at_warm_up(
    state: NodeState, r: redis.Redis, embedded_dir: Path, tmp_path: Path
) -> None:
    def poison(model: object, tokenizer: object) -> None:
        model.model.norm.weight.fill_(float("nan"))  # type: ignore[attr-defined]

    save_model_variant(embedded_dir, tmp_path / "nan", poison)
    state.registry.register("nan", path=str(tmp_path / "nan"))
    with pytest.raises(ModelLoadError, match="NaN") as caught:
        activate(state, "nan")
    assert caught.value.kind == "invalid"
    _assert_unchanged(state, r)


def test_url_entry_not_downloaded_yet(state: NodeState, r: redis.Redis) -> None:
    state.registry.register("remote", url="http://trainer:8080/artifacts/checkpoints/remote/")
    with pytest.raises(ModelLoadError, match="not downloaded"):
        activate(state, "remote")
    _assert_unchanged(state, r)


def test_reactivating_the_active_model_reloads_it(state: NodeState) -> None:
    before = state.engine.active
    activate(state, "embedded-v1")
    # A fresh copy read from disk (files replaced in place, as rsync does), not the old one.
    assert state.engine.active.model is not before.model
    assert state.engine.active.version == "embedded-v1"
