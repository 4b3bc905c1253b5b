"""The puller against the real gateway (and a server that cuts connections): verified or nothing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoints.manifest import MANIFEST, MANIFEST_DIGEST, Manifest
from codec.codebook import CODEBOOK_FILE, Codebook
from codec.domains import default_codebook
from services.node.codebooks import model_codebook
from services.node.pulling import puller as puller_module
from services.node.pulling.puller import PULLED, Puller, PullError, staging_dir, verify_pulled
from services.trainer.checkpoint import CheckpointInfo, CheckpointStore
from tests.node.cutting_server import CutPlan, serve
from tests.node.swap_fixtures import NODE_TOKEN, flip_byte, gateway, save_checkpoint

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def trainer_store(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> CheckpointStore:
    store = CheckpointStore(tmp_path_factory.mktemp("trainer") / "checkpoints")
    save_checkpoint(store, embedded_dir, step=100)
    return store


@pytest.fixture(scope="module")
def info(trainer_store: CheckpointStore) -> CheckpointInfo:
    return trainer_store.info("step-00000100")


@pytest.fixture(scope="module")
def gateway_url(trainer_store: CheckpointStore, redis_url_module: str) -> Iterator[str]:
    with gateway(trainer_store.root) as url:
        yield url


@pytest.fixture(scope="module")
def redis_url_module(test_redis: object) -> str:
    # The gateway wants a Redis for its SSE hub; artifacts never touch it.
    return test_redis.url  # type: ignore[attr-defined]


def puller(url: str, models: Path, **kw: object) -> Puller:
    return Puller(base_url=url, models_dir=models, token=NODE_TOKEN, retry_pause_s=0.0, **kw)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pull_verifies_every_file_and_appears_by_one_rename(
    gateway_url: str, info: CheckpointInfo, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    with puller(gateway_url, models) as p:
        result = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert result.path == models / info.id and not result.already_present
    assert not staging_dir(models, info.id).exists()
    manifest = Manifest.model_validate_json((result.path / MANIFEST).read_bytes())
    assert hashlib.sha256((result.path / MANIFEST).read_bytes()).hexdigest() == info.manifest_sha256
    assert (result.path / MANIFEST_DIGEST).read_text().split()[0] == info.manifest_sha256
    kept = [
        e for e in manifest.files if e.path not in ("optimizer.pt", "scheduler.pt", "rng_state.pt")
    ]
    for entry in kept:
        assert sha256(result.path / entry.path) == entry.sha256, entry.path
    # Training state is not fetched: the optimizer alone is twice the weights.
    assert "optimizer.pt" in [e.path for e in manifest.files]
    assert not (result.path / "optimizer.pt").exists()
    record = json.loads((result.path / PULLED).read_text())
    assert "optimizer.pt" in record["skipped"] and WEIGHTS in record["files"]
    assert result.bytes == result.fetched_bytes == sum(e.size for e in kept)
    assert result.resumed_bytes == 0 and result.download_seconds > 0

    # A second pull of the same checkpoint finds the verified copy and fetches nothing.
    with puller(gateway_url, models) as p:
        again = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert again.already_present and again.fetched_bytes == 0 and again.bytes == result.bytes


def test_a_wrong_token_is_refused_with_what_to_set(
    gateway_url: str, info: CheckpointInfo, tmp_path: Path
) -> None:
    with (
        Puller(base_url=gateway_url, models_dir=tmp_path, token="wrong") as p,
        pytest.raises(PullError, match="R3_NODE_TOKEN"),
    ):
        p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert not (tmp_path / info.id).exists()


def test_a_manifest_other_than_the_announced_one_is_refused(
    gateway_url: str, info: CheckpointInfo, tmp_path: Path
) -> None:
    with (
        puller(gateway_url, tmp_path) as p,
        pytest.raises(PullError, match="manifest mismatch"),
    ):
        p.pull(info.id, manifest_sha256="0" * 64)
    assert not (tmp_path / info.id).exists()


def test_an_id_that_is_not_a_checkpoint_id_is_never_fetched(
    gateway_url: str, tmp_path: Path
) -> None:
    with (
        puller(gateway_url, tmp_path) as p,
        pytest.raises(PullError, match="not a checkpoint id"),
    ):
        p.pull("../../etc", manifest_sha256="0" * 64)


def test_a_corrupt_byte_fails_the_pull_and_nothing_is_published(
    tmp_path: Path, embedded_dir: Path, redis_url: str
) -> None:
    store = CheckpointStore(tmp_path / "trainer")
    info = save_checkpoint(store, embedded_dir, step=5, with_optimizer=False)
    flip_byte(store.root / info.id / WEIGHTS, 4096)
    models = tmp_path / "models"
    with (
        gateway(store.root) as url,
        puller(url, models) as p,
        pytest.raises(PullError, match=f"sha256 mismatch: {WEIGHTS}"),
    ):
        p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert not (models / info.id).exists()
    # The corrupt copy is not kept for a resume: the next attempt fetches it fresh.
    assert not (staging_dir(models, info.id) / WEIGHTS).exists()


def test_a_codebook_is_pulled_verified_and_a_tampered_one_is_refused_like_weights(
    tmp_path: Path, embedded_dir: Path, redis_url: str
) -> None:
    codebook = default_codebook()
    store = CheckpointStore(tmp_path / "trainer")
    info = save_checkpoint(store, embedded_dir, step=8, with_optimizer=False, codebook=codebook)
    with gateway(store.root) as url:
        with puller(url, tmp_path / "models") as p:
            result = p.pull(info.id, manifest_sha256=info.manifest_sha256)
        # Listed in the manifest like every other file, fetched and hashed like them.
        assert result.manifest.codebook == codebook.version
        entry = next(e for e in result.manifest.files if e.path == CODEBOOK_FILE)
        assert sha256(result.path / CODEBOOK_FILE) == entry.sha256
        pulled = model_codebook(result.path)
        assert pulled is not None and pulled.version == codebook.version

        # Tampered at the source: two codes swap meanings, still a well-formed codebook.
        source = store.root / info.id / CODEBOOK_FILE
        data = json.loads(source.read_text())
        codes = data["codes"]
        codes["<E000>"], codes["<E001>"] = codes["<E001>"], codes["<E000>"]
        source.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        assert Codebook.load(source).version != codebook.version
        models = tmp_path / "other-models"
        with (
            puller(url, models) as p,
            pytest.raises(PullError, match=f"sha256 mismatch: {CODEBOOK_FILE}"),
        ):
            p.pull(info.id, manifest_sha256=info.manifest_sha256)
        assert not (models / info.id).exists()

    # Tampered on the node's disk after the pull: the check before serving names it.
    verify_pulled(result.path)  # forget the copy this process just verified
    (result.path / CODEBOOK_FILE).write_text(source.read_text())
    assert verify_pulled(result.path) == [f"{CODEBOOK_FILE}: sha256 differs from the manifest"]


def test_a_truncated_file_fails_the_pull(
    tmp_path: Path, embedded_dir: Path, redis_url: str
) -> None:
    store = CheckpointStore(tmp_path / "trainer")
    info = save_checkpoint(store, embedded_dir, step=6, with_optimizer=False)
    weights = store.root / info.id / WEIGHTS
    os.truncate(weights, weights.stat().st_size // 2)
    models = tmp_path / "models"
    with (
        gateway(store.root) as url,
        puller(url, models, retries=1) as p,
        pytest.raises(PullError, match="truncated file"),
    ):
        p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert not (models / info.id).exists()


def test_a_broken_connection_is_resumed_with_range_in_the_same_pull(
    trainer_store: CheckpointStore, info: CheckpointInfo, tmp_path: Path
) -> None:
    size = (trainer_store.root / info.id / WEIGHTS).stat().st_size
    cut = int(size * 0.4)
    plan = CutPlan(file=WEIGHTS, cut_after=cut, cuts=1)
    with serve(trainer_store.root, plan) as url, puller(url, tmp_path) as p:
        result = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert plan.ranges == [f"bytes={cut}-"]
    assert result.resumed_bytes == cut > 0
    assert sha256(result.path / WEIGHTS) == next(
        e.sha256 for e in result.manifest.files if e.path == WEIGHTS
    )


def test_a_download_killed_midway_fails_then_the_next_pull_resumes_from_staging(
    trainer_store: CheckpointStore, info: CheckpointInfo, gateway_url: str, tmp_path: Path
) -> None:
    size = (trainer_store.root / info.id / WEIGHTS).stat().st_size
    cut = size // 3
    plan = CutPlan(file=WEIGHTS, cut_after=cut, cuts=1000)
    with (
        serve(trainer_store.root, plan) as url,
        puller(url, tmp_path, retries=0) as p,
        pytest.raises(PullError, match=f"download interrupted: {WEIGHTS} has {cut} of {size}"),
    ):
        p.pull(info.id, manifest_sha256=info.manifest_sha256)
    # Never visible as a model; the partial bytes wait in staging.
    assert not (tmp_path / info.id).exists()
    assert (staging_dir(tmp_path, info.id) / WEIGHTS).stat().st_size == cut

    with puller(gateway_url, tmp_path) as p:  # the real gateway answers the Range request
        result = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    # The weights resumed at `cut` (the files before them were complete in staging).
    assert result.resumed_bytes >= cut > 0
    assert result.fetched_bytes + result.resumed_bytes == result.bytes
    assert sha256(result.path / WEIGHTS) == next(
        e.sha256 for e in result.manifest.files if e.path == WEIGHTS
    )


def test_a_hand_copied_model_under_the_same_id_is_set_aside_not_deleted(
    gateway_url: str, info: CheckpointInfo, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    by_hand = models / info.id
    by_hand.mkdir(parents=True)
    (by_hand / "notes.txt").write_text("rsynced by hand")
    with puller(gateway_url, models) as p:
        result = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    assert (result.path / PULLED).is_file()
    (aside,) = models.glob(f".replaced-{info.id}-*")
    assert (aside / "notes.txt").read_text() == "rsynced by hand"


def test_a_fresh_pull_is_not_hashed_again_but_a_restart_or_an_edit_is(
    gateway_url: str, info: CheckpointInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    with puller(gateway_url, models) as p:
        result = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    hashed: list[Path] = []
    real = puller_module.sha256_file
    monkeypatch.setattr(puller_module, "sha256_file", lambda f: hashed.append(f) or real(f))
    # The activation right after the pull: the copy this process just verified, untouched.
    assert verify_pulled(result.path) == [] and hashed == []
    # Later (as after a restart, when nothing is remembered) every file is hashed again …
    assert verify_pulled(result.path) == [] and hashed
    # … and an edit after the pull is caught even by the first check after it.
    with puller(gateway_url, tmp_path / "again") as p:
        fresh = p.pull(info.id, manifest_sha256=info.manifest_sha256)
    flip_byte(fresh.path / WEIGHTS, 100)
    assert verify_pulled(fresh.path) == [f"{WEIGHTS}: sha256 differs from the manifest"]
