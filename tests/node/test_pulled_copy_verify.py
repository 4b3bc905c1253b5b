"""A pulled checkpoint is verified against its manifest before it is served, at start-up as
at activation: a copy corrupted on disk while the node was down is never served."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from bus.publish import Publisher
from checkpoints.manifest import MANIFEST, FileEntry, Manifest
from codec.codebook import CODEBOOK_FILE, Codebook
from services.node.api.app import startup_model
from services.node.config import NodeSettings
from services.node.errors import ModelLoadError
from services.node.pulling.activation import activate
from services.node.pulling.puller import PULLED, verify_pulled
from services.node.pulling.registry import Registry
from services.node.serving.engine import Engine
from services.node.serving.loading import load_for_serving
from services.node.state import NodeState


def pulled_copy(source: Path, models_dir: Path, checkpoint: str) -> Path:
    """`source` laid out as the puller leaves a checkpoint: files, manifest, pulled.json."""
    dest = models_dir / checkpoint
    shutil.copytree(source, dest)
    files = [
        FileEntry(
            path=p.relative_to(dest).as_posix(),
            size=p.stat().st_size,
            sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    ]
    manifest = Manifest(
        id=checkpoint,
        step=7,
        created=datetime.now(UTC),
        model_name="embedded",
        files=files,
        total_bytes=sum(f.size for f in files),
    )
    raw = (manifest.model_dump_json(indent=2) + "\n").encode()
    (dest / MANIFEST).write_bytes(raw)
    record = {
        "id": checkpoint,
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "files": [f.path for f in files],
        "skipped": [],
    }
    (dest / PULLED).write_text(json.dumps(record))
    return dest


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(node_device="cpu", data_dir=tmp_path)


@pytest.fixture
def state(r: redis.Redis, embedded_dir: Path, settings: NodeSettings) -> Iterator[NodeState]:
    registry = Registry(r, "n1")
    registry.register("embedded-v1", path=str(embedded_dir))
    registry.set_active("embedded-v1")
    engine = Engine(load_for_serving(embedded_dir, "embedded-v1", settings))
    yield NodeState(settings, r, engine, registry, Publisher(r), "n1")
    engine.close()


def test_a_pulled_copy_corrupted_on_disk_is_not_served_after_a_restart(
    r: redis.Redis, embedded_dir: Path, settings: NodeSettings
) -> None:
    copy = pulled_copy(embedded_dir, settings.models_dir, "step-00000007")
    assert verify_pulled(copy) == []
    registry = Registry(r, "n1")
    registry.register("step-00000007", source="trainer", step=7)  # as the watcher does
    registry.set_active("step-00000007")
    flip_a_byte(copy / "model.safetensors")  # the disk rots while the node is down

    loaded = startup_model(settings, registry)  # what a restarted node serves
    assert loaded.version != "step-00000007"
    assert registry.active_id() == loaded.version  # the registry says what serves
    assert not copy.exists()  # moved aside, so a new pull fetches it afresh
    [aside] = list(settings.models_dir.glob(".corrupt-step-00000007-*"))
    assert "model.safetensors: sha256 differs" in (aside / "why.txt").read_text()


def test_activating_a_corrupt_pulled_copy_changes_nothing(
    state: NodeState, r: redis.Redis, embedded_dir: Path, settings: NodeSettings
) -> None:
    copy = pulled_copy(embedded_dir, settings.models_dir, "step-00000008")
    state.registry.register("step-00000008", source="trainer", step=8)
    (copy / "config.json").write_text("{}")  # a size change: caught before any hashing
    with pytest.raises(ModelLoadError, match="failed verification") as caught:
        activate(state, "step-00000008")
    assert caught.value.kind == "invalid"
    assert state.engine.active.version == "embedded-v1"
    assert state.registry.active_id() == "embedded-v1"


def test_a_sound_pulled_copy_is_served(
    state: NodeState, embedded_dir: Path, settings: NodeSettings
) -> None:
    pulled_copy(embedded_dir, settings.models_dir, "step-00000009")
    state.registry.register("step-00000009", source="trainer", step=9)
    activate(state, "step-00000009")
    assert state.engine.active.version == "step-00000009"


def test_a_pulled_checkpoint_with_codes_is_served_with_its_codebook(
    state: NodeState, coded_model_dir: Path, own_codebook: Codebook, settings: NodeSettings
) -> None:
    copy = pulled_copy(coded_model_dir, settings.models_dir, "step-00000010")
    assert CODEBOOK_FILE in json.loads((copy / PULLED).read_text())["files"]
    state.registry.register("step-00000010", source="trainer", step=10)
    activate(state, "step-00000010")
    codebook = state.engine.active.codebook
    assert codebook is not None and codebook.version == own_codebook.version


def test_a_pulled_codebook_edited_on_disk_is_refused_like_the_weights(
    state: NodeState, coded_model_dir: Path, settings: NodeSettings
) -> None:
    copy = pulled_copy(coded_model_dir, settings.models_dir, "step-00000011")
    state.registry.register("step-00000011", source="trainer", step=11)
    data = json.loads((copy / CODEBOOK_FILE).read_text())
    codes = data["codes"]
    codes["<E001>"], codes["<E002>"] = codes["<E002>"], codes["<E001>"]  # same size
    (copy / CODEBOOK_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    with pytest.raises(ModelLoadError, match=f"{CODEBOOK_FILE}: sha256 differs") as caught:
        activate(state, "step-00000011")
    assert caught.value.kind == "invalid"
    assert state.engine.active.version == "embedded-v1" and state.engine.active.codebook is None
