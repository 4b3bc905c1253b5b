"""The watcher on a real node: pull, verify, register, activate by policy; every failure
reported as model.swap_failed with the old model still serving, dead-lettered after N."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch

from bus import keys
from bus.encoding import from_fields
from bus.events import CheckpointReady, Event
from bus.publish import Publisher
from services.node.pulling.checkpoint_watcher import CheckpointWatcher
from services.node.pulling.puller import Puller, staging_dir
from services.trainer.checkpoint import CheckpointInfo, CheckpointStore, publish_ready
from tests.node.cutting_server import CutPlan, serve
from tests.node.swap_fixtures import NODE_TOKEN, flip_byte, gateway, save_checkpoint
from tests.rig.node import RunningNode

WEIGHTS = "model.safetensors"


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "trainer-checkpoints")


@pytest.fixture
def gateway_url(store: CheckpointStore, redis_url: str) -> Iterator[str]:
    with gateway(store.root) as url:
        yield url


@pytest.fixture
def make_node(
    node_factory: Callable[..., RunningNode], gateway_url: str
) -> Callable[..., RunningNode]:
    def make(**overrides: Any) -> RunningNode:
        fields = {"gateway_url": gateway_url, "node_token": NODE_TOKEN, "checkpoint_watch": False}
        return node_factory(**{**fields, **overrides})

    return make


def watcher(node: RunningNode, **kw: Any) -> CheckpointWatcher:
    """A watcher driven by hand (run_once), retrying at once, from the stream's start."""
    kw.setdefault("reclaim_idle_ms", 0)
    kw.setdefault("max_deliveries", 3)
    return CheckpointWatcher(node.state, start_id="0", block_ms=100, **kw)


def events(r: redis.Redis, stream: str, type_: str) -> list[Event]:
    out = [from_fields(raw, entry_id=eid.decode(), stream=stream) for eid, raw in r.xrange(stream)]
    return [e for e in out if e.type == type_]


def ask(node: RunningNode) -> str:
    """One completion; returns the version that answered (header and body agree)."""
    response = httpx.post(
        node.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == response.headers["X-Regime3-Model"]
    return str(response.headers["X-Regime3-Model"])


def test_a_ready_checkpoint_is_pulled_and_swapped_in_by_the_running_node(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
) -> None:
    node = make_node(checkpoint_watch=True)  # the app's own background watcher
    before = ask(node)
    # The group starts at the stream's end when the node starts: announce after it.
    info = save_checkpoint(store, embedded_dir, step=10, val_loss=2.0, nudge=0.01)
    publish_ready(Publisher(r), info)
    deadline = time.monotonic() + 60
    while node.state.registry.active_id() != info.id:
        assert time.monotonic() < deadline, events(r, keys.STREAM_MODELS, "model.swap_failed")
        time.sleep(0.1)
    assert ask(node) == info.id != before
    (pulled,) = events(r, keys.STREAM_MODELS, "checkpoint.pulled")
    (swapped,) = events(r, keys.STREAM_MODELS, "model.swapped")
    assert pulled.checkpoint_id == info.id and pulled.bytes > 0  # type: ignore[attr-defined]
    assert swapped.model_id == info.id and swapped.previous_model_id == before  # type: ignore[attr-defined]
    assert swapped.bytes == pulled.bytes and swapped.download_seconds > 0  # type: ignore[attr-defined]
    assert swapped.load_seconds > 0 and swapped.swap_seconds >= 0  # type: ignore[attr-defined]
    assert (
        r.xpending(keys.STREAM_CHECKPOINTS, keys.node_checkpoints_group("test-node"))["pending"]
        == 0
    )
    assert node.state.registry.get(info.id).step == 10


def _corrupt(store: CheckpointStore, info: CheckpointInfo) -> CheckpointReady | None:
    flip_byte(store.root / info.id / WEIGHTS, 1000)
    return None


def _truncate(store: CheckpointStore, info: CheckpointInfo) -> CheckpointReady | None:
    path = store.root / info.id / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return None


def _wrong_manifest(store: CheckpointStore, info: CheckpointInfo) -> CheckpointReady | None:
    return CheckpointReady(
        checkpoint_id=info.id,
        step=info.step,
        manifest_sha256="ab" * 32,  # announced digest differs from what the gateway serves
        size_bytes=info.size_bytes,
        files=info.files,
    )


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt, "sha256 mismatch: model.safetensors"),
        (_truncate, "truncated file: the gateway's model.safetensors"),
        (_wrong_manifest, "manifest mismatch"),
    ],
    ids=["corrupt-byte", "truncated-file", "manifest-mismatch"],
)
def test_a_bad_checkpoint_fails_the_swap_and_the_old_model_keeps_serving(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
    damage: Callable[[CheckpointStore, CheckpointInfo], CheckpointReady | None],
    reason: str,
) -> None:
    node = make_node()
    serving = ask(node)
    info = save_checkpoint(store, embedded_dir, step=20, with_optimizer=False)
    event = damage(store, info)
    publisher = Publisher(r)
    publisher.publish(event) if event else publish_ready(publisher, info)
    w = watcher(node)
    (outcome,) = w.group.run_once(block_ms=100)
    assert outcome.result == "failed"
    (failed,) = events(r, keys.STREAM_MODELS, "model.swap_failed")
    assert reason in failed.reason  # type: ignore[attr-defined]
    assert failed.attempt == 1 and failed.serving_model_id == serving  # type: ignore[attr-defined]
    assert failed.checkpoint_id == info.id  # type: ignore[attr-defined]
    # Nothing partial or unverified became a model: not on disk, not registered, not serving.
    assert not (node.settings.models_dir / info.id).exists()
    assert info.id not in node.state.registry.ids()
    assert ask(node) == serving and node.state.engine.active.version == serving
    assert not events(r, keys.STREAM_MODELS, "model.swapped")


def test_a_download_killed_midway_fails_then_the_next_delivery_resumes_it(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    gateway_url: str,
    r: redis.Redis,
) -> None:
    node = make_node()
    serving = ask(node)
    info = save_checkpoint(store, embedded_dir, step=30, with_optimizer=False, nudge=0.01)
    publish_ready(Publisher(r), info)
    size = (store.root / info.id / WEIGHTS).stat().st_size
    cut = size // 3
    plan = CutPlan(file=WEIGHTS, cut_after=cut, cuts=1000)
    models = node.settings.models_dir
    with serve(store.root, plan) as flaky:
        w = watcher(
            node,
            puller=Puller(base_url=flaky, models_dir=models, token=NODE_TOKEN, retries=1),
        )
        (first,) = w.group.run_once(block_ms=100)
    assert first.result == "failed"
    assert plan.ranges == [f"bytes={cut}-"]  # it resumed once with Range, cut again
    (failed,) = events(r, keys.STREAM_MODELS, "model.swap_failed")
    assert "download interrupted" in failed.reason  # type: ignore[attr-defined]
    assert ask(node) == serving and not (models / info.id).exists()
    assert (staging_dir(models, info.id) / WEIGHTS).stat().st_size == 2 * cut

    w.puller = Puller(base_url=gateway_url, models_dir=models, token=NODE_TOKEN)
    (second,) = w.group.run_once(block_ms=100)
    assert second.result == "acked" and second.deliveries == 2
    (pulled,) = events(r, keys.STREAM_MODELS, "checkpoint.pulled")
    assert pulled.resumed_bytes >= 2 * cut > 0  # type: ignore[attr-defined]
    assert ask(node) == info.id


def test_out_of_memory_while_loading_fails_the_swap_and_the_old_model_keeps_serving(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = make_node()
    serving = ask(node)
    info = save_checkpoint(store, embedded_dir, step=40, with_optimizer=False)
    publish_ready(Publisher(r), info)

    # A GPU running out of memory cannot happen on this CPU host: the loader raises what
    # torch raises on a full card, and everything around it is the real code.
    def full_card(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.17 GiB")

    monkeypatch.setattr("services.node.serving.loading.load_model_and_tokenizer", full_card)
    (outcome,) = watcher(node).group.run_once(block_ms=100)
    assert outcome.result == "failed"
    (failed,) = events(r, keys.STREAM_MODELS, "model.swap_failed")
    assert "out of GPU memory while loading" in failed.reason  # type: ignore[attr-defined]
    assert failed.serving_model_id == serving  # type: ignore[attr-defined]
    assert ask(node) == serving and node.state.registry.active_id() == serving


def test_after_n_failed_deliveries_the_entry_is_dead_lettered_and_staging_removed(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
) -> None:
    node = make_node()
    serving = ask(node)
    info = save_checkpoint(store, embedded_dir, step=50, with_optimizer=False)
    flip_byte(store.root / info.id / WEIGHTS, 2000)
    entry_id = publish_ready(Publisher(r), info)
    w = watcher(node, max_deliveries=3)
    outcomes = [o.result for _ in range(3) for o in w.group.run_once(block_ms=100)]
    assert outcomes == ["failed", "failed", "dead-lettered"]
    failures = events(r, keys.STREAM_MODELS, "model.swap_failed")
    assert [f.attempt for f in failures] == [1, 2, 3]  # type: ignore[attr-defined]
    (dead,) = events(r, keys.STREAM_DEADLETTER, "deadletter")
    assert dead.source_id == entry_id and dead.deliveries == 3  # type: ignore[attr-defined]
    assert "sha256 mismatch" in dead.error  # type: ignore[attr-defined]
    (alert,) = events(r, keys.STREAM_ALERTS, "alert")
    assert alert.code == "swap_failed" and info.id in alert.message  # type: ignore[attr-defined]
    assert not staging_dir(node.settings.models_dir, info.id).exists()
    assert w.group.run_once(block_ms=100) == []  # acked: never retried again
    assert ask(node) == serving


def test_policy_manual_pulls_and_registers_but_does_not_activate(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
) -> None:
    node = make_node(swap_policy="manual")
    serving = ask(node)
    info = save_checkpoint(store, embedded_dir, step=60, with_optimizer=False)
    publish_ready(Publisher(r), info)
    (outcome,) = watcher(node).group.run_once(block_ms=100)
    assert outcome.result == "acked"
    assert node.state.registry.get(info.id).path == str(node.settings.models_dir / info.id)
    assert ask(node) == serving and not events(r, keys.STREAM_MODELS, "model.swapped")
    response = httpx.post(
        node.url + "/models/set_active",
        json={"id": info.id},
        headers=node.admin_headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert ask(node) == info.id


def test_policy_improving_activates_only_a_better_validation_loss(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
) -> None:
    node = make_node(swap_policy="improving")
    w = watcher(node)
    publisher = Publisher(r)
    served = []
    for step, val_loss in ((70, 2.0), (71, 2.5), (72, None), (73, 1.5)):
        info = save_checkpoint(
            store, embedded_dir, step=step, val_loss=val_loss, with_optimizer=False
        )
        publish_ready(publisher, info)
        (outcome,) = w.group.run_once(block_ms=100)
        assert outcome.result == "acked"
        served.append(ask(node))
    assert served == ["step-00000070", "step-00000070", "step-00000070", "step-00000073"]


def test_only_the_last_k_pulled_models_stay_on_disk_and_the_active_one_always(
    make_node: Callable[..., RunningNode],
    store: CheckpointStore,
    embedded_dir: Path,
    r: redis.Redis,
) -> None:
    node = make_node(keep_models=2)
    models = node.settings.models_dir
    hand_copied = models / "my-model"
    hand_copied.mkdir(parents=True)
    w = watcher(node)
    publisher = Publisher(r)
    infos = []
    for step in (80, 81, 82):
        infos.append(save_checkpoint(store, embedded_dir, step=step, with_optimizer=False))
        publish_ready(publisher, infos[-1])
        w.group.run_once(block_ms=100)
    assert sorted(p.name for p in models.iterdir()) == ["my-model", infos[1].id, infos[2].id]
    assert infos[0].id not in node.state.registry.ids()
    # The active model survives pruning even when it is the oldest.
    node.state.registry.set_active(infos[1].id)
    for step in (83, 84):
        publish_ready(
            publisher, save_checkpoint(store, embedded_dir, step=step, with_optimizer=False)
        )
        node.state.settings.swap_policy = "manual"
        w.group.run_once(block_ms=100)
    kept = sorted(p.name for p in models.iterdir())
    assert kept == ["my-model", infos[1].id, "step-00000083", "step-00000084"]
