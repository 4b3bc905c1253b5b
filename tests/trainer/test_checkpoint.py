from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bus import keys
from bus.broadcast import EARLIEST, BroadcastReader
from bus.publish import Publisher
from services.model.loading import load_model_and_tokenizer
from services.trainer.checkpoint import (
    ISSUED,
    MANIFEST,
    MANIFEST_DIGEST,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointStore,
    JobCursor,
    publish_ready,
)
from tests.model.fixtures import embedded_model_dir
from tests.rig.files import flip_byte

CURSOR = JobCursor(
    job_id="job-1", dataset_sha256="ab" * 32, byte_offset=4096, line=17, examples_done=16
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return embedded_model_dir(tmp_path_factory)


@pytest.fixture
def tiny(tiny_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model, tokenizer = load_model_and_tokenizer(tiny_dir)
    model.train()
    return model, tokenizer


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoints")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    seed: int,
) -> None:
    batch = torch.randint(10, 500, (2, 24), generator=torch.Generator().manual_seed(seed))
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 10)


def build_optimizer(
    model: PreTrainedModel,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)


def test_the_manifest_lists_every_file_with_its_size_and_sha256(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    optimizer, scheduler = build_optimizer(model)
    info = store.save(
        model,
        tokenizer,
        step=1000,
        trainer_state={"streaming_ce": 2.5, "batch_number": 3},
        optimizer=optimizer,
        scheduler=scheduler,
        cursor=CURSOR,
        trainer_config={"lr": 1e-2, "max_length": 512},
        model_name="tiny",
        extra_meta={"mode": "english"},
    )
    assert info.id == "step-00001000" and info.path == store.root / "step-00001000"
    raw = (info.path / MANIFEST).read_bytes()
    manifest = json.loads(raw)
    on_disk = {p.relative_to(info.path).as_posix() for p in info.path.rglob("*") if p.is_file()} - {
        MANIFEST,
        MANIFEST_DIGEST,
    }
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == on_disk
    assert {"model.safetensors", "config.json", "tokenizer.json", "optimizer.pt"} <= on_disk
    assert {"scheduler.pt", "trainer_state.json", "rng_state.pt"} <= on_disk
    for name, entry in listed.items():
        assert entry["size"] == (info.path / name).stat().st_size, name
        assert entry["sha256"] == sha256(info.path / name), name
    assert manifest["total_bytes"] == info.size_bytes == sum(e["size"] for e in listed.values())
    assert info.files == len(listed)
    # The digest the event carries is the manifest's own, and `sha256sum -c` agrees.
    assert info.manifest_sha256 == hashlib.sha256(raw).hexdigest()
    check = subprocess.run(
        ["sha256sum", "-c", MANIFEST_DIGEST], cwd=info.path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert manifest["step"] == 1000 and manifest["model_name"] == "tiny"
    assert manifest["cursor"] == CURSOR.model_dump()
    assert manifest["trainer_config"] == {"lr": 1e-2, "max_length": 512}
    assert manifest["meta"] == {"mode": "english"} and manifest["created"].endswith("Z")
    assert store.verify(info.id) == []
    # No temporary left; beside it only the record of ids given out.
    assert sorted(p.name for p in store.root.iterdir()) == [".issued-ids", "step-00001000"]


def test_a_second_save_at_the_same_step_gets_the_next_revision(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    first = store.save(model, tokenizer, step=5)
    digest = first.manifest_sha256
    # After a resume from step 5, the end of the file saves at step 5 again.
    second = store.save(model, tokenizer, step=5, cursor=CURSOR)
    third = store.save(model, tokenizer, step=5)
    assert [first.id, second.id, third.id] == [
        "step-00000005",
        "step-00000005-r1",
        "step-00000005-r2",
    ]
    assert store.info(first.id).manifest_sha256 == digest  # never rewritten
    assert [i.id for i in store.list()] == [first.id, second.id, third.id]
    latest = store.load_latest()
    assert latest is not None and latest.info.id == third.id


def test_bad_trainer_state_fails_before_anything_is_written(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    with pytest.raises(CheckpointError, match=r"trainer_state is not plain JSON.*\.item\(\)"):
        store.save(model, tokenizer, step=1, trainer_state={"loss": torch.tensor(1.0)})
    assert [p for p in store.root.iterdir() if p.name != ISSUED] == []


class DiskFullAdamW(torch.optim.AdamW):
    """An optimizer whose state cannot be written: what ENOSPC does halfway through a save."""

    def state_dict(self) -> dict[str, Any]:
        raise OSError(28, "No space left on device")


def test_an_error_mid_save_leaves_no_checkpoint_and_the_previous_one_loads(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    good = store.save(model, tokenizer, step=1)
    with pytest.raises(OSError, match="No space left"):
        store.save(model, tokenizer, step=2, optimizer=DiskFullAdamW(model.parameters()))
    assert [p.name for p in store.root.iterdir() if p.name != ISSUED] == [good.id]
    latest = store.load_latest()
    assert latest is not None and latest.info.id == good.id


class KilledAdamW(torch.optim.AdamW):
    """The power goes out while the optimizer state is written, after the weights."""

    def state_dict(self) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def test_a_save_killed_midway_is_never_listed_and_recovery_removes_it(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    store.save(model, tokenizer, step=1)
    # A forked child, not a fresh interpreter: importing torch again would cost ~10 s here.
    pid = os.fork()
    if pid == 0:  # the child: no pytest cleanup may run here, whatever happens
        try:
            torch.set_num_threads(1)
            store.save(model, tokenizer, step=2, optimizer=KilledAdamW(model.parameters()))
        finally:
            os._exit(3)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked save neither finished nor died within 60 s")
        time.sleep(0.02)
    assert os.WIFSIGNALED(waited[1]) and os.WTERMSIG(waited[1]) == signal.SIGKILL
    leftovers = [p for p in store.root.iterdir() if p.name.startswith(".tmp-step-00000002-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert [i.id for i in store.list()] == ["step-00000001"]
    latest = store.load_latest()  # the trainer's startup path
    assert latest is not None and latest.info.id == "step-00000001"
    assert not leftovers[0].exists()
    assert [p.name for p in store.root.iterdir() if p.name != ISSUED] == ["step-00000001"]


def test_a_flipped_byte_fails_verify_and_load_latest_falls_back(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    good = store.save(model, tokenizer, step=1)
    bad = store.save(model, tokenizer, step=2)
    weights = bad.path / "model.safetensors"
    flip_byte(weights, weights.stat().st_size // 2)
    assert store.verify(bad.id) == ["model.safetensors: sha256 differs from the manifest"]
    with pytest.raises(CheckpointCorrupt, match="step-00000002 failed verification"):
        store.load(bad.id)
    latest = store.load_latest()
    assert latest is not None and latest.info.id == good.id
    # The corrupt one is set aside with the reason, not deleted and not listed.
    [quarantined] = store.quarantined()
    assert quarantined.name.startswith(".corrupt-step-00000002-")
    assert "sha256 differs" in (quarantined / "why.txt").read_text()
    assert [i.id for i in store.list()] == [good.id]


def test_a_quarantined_or_deleted_checkpoints_id_is_never_reused(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    good = store.save(model, tokenizer, step=1)
    bad = store.save(model, tokenizer, step=2, cursor=CURSOR)
    flip_byte(bad.path / "model.safetensors", 100)
    latest = store.load_latest()
    assert latest is not None and latest.info.id == good.id
    assert [i.id for i in store.set_aside] == [bad.id]  # what the trainer must account for
    assert store.set_aside[0].cursor == CURSOR
    # Training goes on from step 1 and saves at step 2 again: a new id, not the announced one.
    again = store.save(model, tokenizer, step=2)
    assert again.id == "step-00000002-r1"
    # Even once the quarantined copy and the checkpoint are deleted (disk pressure).
    for path in store.quarantined():
        store.remove_quarantined(path)
    store.delete(again.id)
    assert store.save(model, tokenizer, step=2).id == "step-00000002-r2"
    assert store.issued() == {good.id, bad.id, again.id, "step-00000002-r2"}


def test_a_truncated_file_fails_on_its_size(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    optimizer, _ = build_optimizer(model)
    info = store.save(model, tokenizer, step=3, optimizer=optimizer)
    size = (info.path / "optimizer.pt").stat().st_size
    os.truncate(info.path / "optimizer.pt", size // 2)
    assert store.verify(info.id) == [f"optimizer.pt: {size // 2} bytes, the manifest says {size}"]
    assert store.load_latest() is None


def test_an_edited_manifest_or_a_partial_copy_is_refused(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    info = store.save(model, tokenizer, step=7)
    manifest = info.path / MANIFEST
    manifest.write_text(manifest.read_text().replace('"step": 7', '"step": 8'))
    assert store.verify(info.id) == [
        "manifest.json does not match manifest.sha256: the manifest was altered"
    ]
    # A directory copied by hand without its manifest: not listed, and verify says why.
    partial = store.root / "step-00000009"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x")
    assert "no manifest.json" in store.verify(partial.name)[0]
    assert "step-00000009" not in [i.id for i in store.list()]


def test_optimizer_scheduler_and_rng_round_trip(
    store: CheckpointStore,
    tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase],
    one_thread: None,
) -> None:
    model, tokenizer = tiny
    optimizer, scheduler = build_optimizer(model)
    for seed in (1, 2):
        train_step(model, optimizer, scheduler, seed)
    info = store.save(
        model,
        tokenizer,
        step=2,
        trainer_state={"streaming_ce": 2.5},
        optimizer=optimizer,
        scheduler=scheduler,
        cursor=CURSOR,
    )
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    train_step(model, optimizer, scheduler, 3)
    uninterrupted = {name: p.detach().clone() for name, p in model.named_parameters()}

    checkpoint = store.load(info.id)
    resumed, _ = checkpoint.load_model()
    resumed.train()
    optimizer2, scheduler2 = build_optimizer(resumed)
    torch.manual_seed(999)  # the restore must put the RNG back where the save found it
    checkpoint.restore(optimizer=optimizer2, scheduler=scheduler2)
    torch.manual_seed(1234)
    assert torch.equal(torch.rand(3), expected_draw)
    assert scheduler2.last_epoch == 2
    assert scheduler2.get_last_lr() == pytest.approx([warmup(2) * 1e-2])
    train_step(resumed, optimizer2, scheduler2, 3)
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p.detach(), uninterrupted[name], atol=1e-6, rtol=1e-5)
    assert checkpoint.trainer_state() == {"streaming_ce": 2.5}
    assert checkpoint.info.cursor == CURSOR

    # Sensitivity: the same step on a fresh optimizer (no restore) lands elsewhere.
    fresh, _ = checkpoint.load_model()
    fresh.train()
    optimizer3, scheduler3 = build_optimizer(fresh)
    train_step(fresh, optimizer3, scheduler3, 3)
    moved = dict(fresh.named_parameters())
    assert any(
        not torch.allclose(moved[name].detach(), uninterrupted[name], atol=1e-6)
        for name in uninterrupted
    )


def test_restore_says_when_a_checkpoint_has_no_optimizer_state(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    info = store.save(model, tokenizer, step=1)
    optimizer, _ = build_optimizer(model)
    with pytest.raises(CheckpointError, match=r"has no optimizer\.pt"):
        store.load(info.id).restore(optimizer=optimizer)


def test_a_later_validation_loss_shows_in_the_listing_and_keeps_it_verified(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    info = store.save(model, tokenizer, step=1, val_loss=3.0)
    assert store.list()[0].val_loss == 3.0
    store.record_validation(info.id, 2.25)
    assert store.list()[0].val_loss == 2.25
    assert store.verify(info.id) == []
    assert store.info(info.id).manifest_sha256 == info.manifest_sha256


def test_publish_ready_announces_the_checkpoint_on_its_stream(
    r: redis.Redis,
    store: CheckpointStore,
    tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny
    info = store.save(model, tokenizer, step=1000, val_loss=1.5)
    entry_id = publish_ready(Publisher(r), info)
    [delivery] = BroadcastReader(r, {keys.STREAM_CHECKPOINTS: EARLIEST}).read(0)
    event = delivery.event
    assert delivery.entry_id == entry_id
    assert event.type == "checkpoint.ready"
    assert event.checkpoint_id == "step-00001000" and event.step == 1000
    assert event.manifest_sha256 == sha256(info.path / MANIFEST)
    assert event.path is None  # the URL is the gateway's: a node builds it from the id
    assert event.size_bytes == info.size_bytes and event.files == info.files
    assert event.val_loss == 1.5


def test_an_issued_id_torn_by_a_full_disk_does_not_swallow_the_next(
    store: CheckpointStore, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    model, tokenizer = tiny
    first = store.save(model, tokenizer, step=1)
    with (store.root / ".issued-ids").open("a") as f:
        f.write("step-000")  # an append cut short by a full disk: no newline
    second = store.save(model, tokenizer, step=2)
    assert {first.id, second.id} <= store.issued()
