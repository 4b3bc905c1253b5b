"""Checkpoints on disk: written atomically with a sha256 manifest, verified before any load.

Layout of `<root>/<id>/` (id `step-00001000`, or `step-00001000-r1` for a second save at the
same step, so an id once published never changes content and a node's Range resume is safe):

    config.json, generation_config.json, model.safetensors   model.save_pretrained
    tokenizer.json, tokenizer_config.json, ...               tokenizer.save_pretrained
    codebook.json                                            the run's codebook, if it has codes
    optimizer.pt, scheduler.pt, rng_state.pt                 torch.save of state dicts
    trainer_state.json                                       the loop's own counters
    manifest.json                                            every file above: size, sha256
    manifest.sha256                                          `sha256sum -c` line for the manifest

A save goes to `<root>/.tmp-<id>-<random>/`, every file and the directory are fsynced, the
manifest is written last, and one rename publishes it: a crash leaves only a `.tmp-*`
directory, which `recover()` removes. Nothing from a checkpoint is trusted until `verify`
has matched every size and sha256; a corrupt one is moved aside to `.corrupt-<id>-<time>/`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bus.events import CheckpointReady
from bus.publish import Publisher
from checkpoints.durable import (
    append_synced,
    fsync_dir,
    fsync_dirs,
    hash_and_sync,
    sha256_file,
    write_synced,
)
from checkpoints.manifest import (
    MANIFEST,
    MANIFEST_DIGEST,
    FileEntry,
    JobCursor,
    Manifest,
    checkpoint_id,
    parse_id,
)
from codec.codebook import CODEBOOK_FILE, Codebook

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG_STATE = "rng_state.pt"
# Written after the manifest by `record_validation` (an eval that finishes later), so it is
# deliberately not in the manifest: the manifest, and the id's content, never change.
VALIDATION = "validation.json"
UNLISTED = frozenset({MANIFEST, MANIFEST_DIGEST, VALIDATION})

# Every id a save ever published, one a line, appended (fsynced) before the rename that
# publishes it. Ids are never reused: not after a quarantine moved the newest aside and
# training went on from an older step, nor after retention deleted one.
ISSUED = ".issued-ids"

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
CORRUPT_PREFIX = ".corrupt-"


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used; the message says which and why."""


class CheckpointCorrupt(CheckpointError):
    def __init__(self, checkpoint_id: str, problems: list[str]) -> None:
        self.checkpoint_id = checkpoint_id
        self.problems = problems
        super().__init__(f"checkpoint {checkpoint_id} failed verification: {'; '.join(problems)}")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a listing knows about a checkpoint, read from its manifest without hashing."""

    id: str
    step: int
    revision: int
    path: Path
    created: datetime
    model_name: str
    manifest_sha256: str
    size_bytes: int  # the files the manifest lists (manifest.json itself not counted)
    files: int
    val_loss: float | None  # validation.json's if recorded later, else the manifest's
    cursor: JobCursor | None

    @property
    def order(self) -> tuple[int, int]:
        """Newest is largest: by step, then by the revision of a same-step re-save."""
        return (self.step, self.revision)


def _json_bytes(value: Any, what: str) -> bytes:
    try:
        return (json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{what} is not plain JSON ({exc}); pass numbers, strings, lists and dicts "
            "(convert tensors with .item() or .tolist())"
        ) from exc


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


# --- loaded checkpoints ----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed `verify`: the only way to get at its weights and state."""

    info: CheckpointInfo
    manifest: Manifest

    @property
    def path(self) -> Path:
        return self.info.path

    def trainer_state(self) -> dict[str, Any]:
        """The mapping the loop passed as `trainer_state` when it saved."""
        value = json.loads((self.path / TRAINER_STATE).read_text())
        return dict(value)

    def load_model(
        self, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and tokenizer saved here, in eval mode on `device` (call .train())."""
        from services.model.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(self.path, device=device, dtype=dtype)

    def restore(
        self,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        rng: bool = True,
    ) -> None:
        """Load optimizer and scheduler state into freshly built ones, and the RNG state.

        The optimizer must be built over the loaded model's parameters, in the same order;
        its state tensors follow each parameter's device (Optimizer.load_state_dict casts).
        """
        for obj, name in ((optimizer, OPTIMIZER), (scheduler, SCHEDULER)):
            if obj is None:
                continue
            file = self.path / name
            if not file.is_file():
                raise CheckpointError(
                    f"checkpoint {self.info.id} has no {name} (it was saved without one); "
                    "resume from a checkpoint the training loop wrote, or start fresh"
                )
            # weights_only: a state dict is tensors and plain values; never unpickle code.
            obj.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        rng_file = self.path / RNG_STATE
        if rng and rng_file.is_file():
            state = torch.load(rng_file, map_location="cpu", weights_only=True)
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                if len(state["cuda"]) == torch.cuda.device_count():
                    torch.cuda.set_rng_state_all(state["cuda"])
                else:
                    log.warning(
                        "checkpoint %s: saved with %d GPUs, now %d: CUDA RNG not restored",
                        self.info.id,
                        len(state["cuda"]),
                        torch.cuda.device_count(),
                    )


# --- the store -------------------------------------------------------------------------------


class CheckpointStore:
    """The checkpoints under `root`. One process writes (the trainer); any may read.

    Startup, in the trainer: `recover()` then `load_latest()`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # What the last `load_latest` quarantined, newest first, as their manifests said:
        # the training that lived only there is lost, and the trainer says what to requeue.
        self.set_aside: builtins.list[CheckpointInfo] = []

    # -- writing ------------------------------------------------------------------------------

    def issued(self) -> set[str]:
        """Every id this store ever gave out: listed, quarantined, deleted or recorded."""
        ids = {entry.name for entry in self._entries()}
        ids.update(quarantined_id(path) for path in self.quarantined())
        with contextlib.suppress(FileNotFoundError):
            ids.update(self.root.joinpath(ISSUED).read_text().split())
        return {i for i in ids if parse_id(i) is not None}

    def next_id(self, step: int) -> tuple[str, int]:
        """The id a save at `step` gets: the plain one, or the next free `-rN` when that id was
        ever given out (a resume from an older checkpoint, a quarantined one)."""
        taken = [
            parsed[1]
            for name in self.issued()
            if (parsed := parse_id(name)) is not None and parsed[0] == step
        ]
        revision = max(taken) + 1 if taken else 0
        return checkpoint_id(step, revision), revision

    def _record_issued(self, checkpoint: str) -> None:
        # A leading newline too: an append torn by a full disk must not glue the next id
        # onto its partial line (parse_id would drop both, and the id could come back).
        append_synced(self.root / ISSUED, "\n" + checkpoint + "\n")

    def save(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        step: int,
        trainer_state: Mapping[str, Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        cursor: JobCursor | None = None,
        trainer_config: Mapping[str, Any] | None = None,
        val_loss: float | None = None,
        model_name: str | None = None,
        extra_meta: Mapping[str, Any] | None = None,
        codebook: Codebook | None = None,
    ) -> CheckpointInfo:
        """Write a complete checkpoint and return it; on any error nothing becomes visible.

        `trainer_state`, `trainer_config` and `extra_meta` must be plain JSON. `model_name`
        defaults to the last part of the model's `name_or_path`. `codebook`: the one whose
        codes the tokenizer holds as tokens, saved as codebook.json (its version in the
        manifest's `codebook`).
        """
        if step < 0:
            raise CheckpointError(f"step must be >= 0, got {step}")
        self.root.mkdir(parents=True, exist_ok=True)
        checkpoint, revision = self.next_id(step)
        # Serialize the JSON parts first: a bad value fails before any big write.
        state_bytes = _json_bytes(dict(trainer_state or {}), "trainer_state")
        config = dict(trainer_config or {})
        meta = dict(extra_meta or {})
        _json_bytes(config, "trainer_config")
        _json_bytes(meta, "extra_meta")
        tmp = self.root / f"{TMP_PREFIX}{checkpoint}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if codebook is not None:
                codebook.save(tmp / CODEBOOK_FILE)
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / SCHEDULER)
            torch.save(_rng_state(), tmp / RNG_STATE)
            write_synced(tmp / TRAINER_STATE, state_bytes)
            files = [
                FileEntry(
                    path=p.relative_to(tmp).as_posix(),
                    size=p.stat().st_size,
                    sha256=hash_and_sync(p),
                )
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            ]
            name = model_name or Path(str(getattr(model, "name_or_path", "") or "model")).name
            manifest = Manifest(
                id=checkpoint,
                step=step,
                revision=revision,
                created=datetime.now(UTC),
                model_name=name,
                cursor=cursor,
                trainer_config=config,
                val_loss=val_loss,
                meta=meta,
                codebook=None if codebook is None else codebook.version,
                files=files,
                total_bytes=sum(f.size for f in files),
            )
            manifest_bytes = (manifest.model_dump_json(indent=2) + "\n").encode()
            write_synced(tmp / MANIFEST, manifest_bytes)
            digest = hashlib.sha256(manifest_bytes).hexdigest()
            write_synced(tmp / MANIFEST_DIGEST, f"{digest}  {MANIFEST}\n".encode())
            fsync_dirs(tmp)
            final = self.root / checkpoint
            self._record_issued(checkpoint)  # before it can be seen: never given out twice
            # rename(2) refuses a non-empty target, so an existing id is never overwritten.
            os.rename(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info(
            "checkpoint %s written: %d files, %d bytes",
            checkpoint,
            len(files),
            manifest.total_bytes,
        )
        return self._info(final, manifest, digest)

    def record_validation(self, checkpoint: str, val_loss: float) -> None:
        """Attach a validation loss measured after the save (retention's best-by-validation)."""
        path = self.root / checkpoint
        if not (path / MANIFEST).is_file():
            raise CheckpointError(f"no checkpoint {checkpoint} under {self.root}")
        tmp = path / f".{VALIDATION}.{secrets.token_hex(4)}"
        write_synced(tmp, _json_bytes({"val_loss": val_loss}, "val_loss"))
        os.replace(tmp, path / VALIDATION)

    # -- reading ------------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _info(self, path: Path, manifest: Manifest, digest: str) -> CheckpointInfo:
        val_loss = manifest.val_loss
        recorded = path / VALIDATION
        if recorded.is_file():
            try:
                val_loss = float(json.loads(recorded.read_text())["val_loss"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s: unreadable, using the manifest's val_loss", recorded)
        return CheckpointInfo(
            id=manifest.id,
            step=manifest.step,
            revision=manifest.revision,
            path=path,
            created=manifest.created,
            model_name=manifest.model_name,
            manifest_sha256=digest,
            size_bytes=manifest.total_bytes,
            files=len(manifest.files),
            val_loss=val_loss,
            cursor=manifest.cursor,
        )

    def _read_manifest(self, path: Path) -> tuple[Manifest, str]:
        raw = (path / MANIFEST).read_bytes()
        return Manifest.model_validate_json(raw), hashlib.sha256(raw).hexdigest()

    def list(self) -> builtins.list[CheckpointInfo]:
        """Every checkpoint with a readable manifest, oldest first. Hashes nothing: cheap."""
        found = []
        for path in self._entries():
            if parse_id(path.name) is None:
                continue
            try:
                manifest, digest = self._read_manifest(path)
            except (OSError, ValueError) as exc:
                log.warning("%s: skipped, manifest unreadable (%s)", path, exc)
                continue
            found.append(self._info(path, manifest, digest))
        return sorted(found, key=lambda info: info.order)

    def info(self, checkpoint: str) -> CheckpointInfo:
        path = self.root / checkpoint
        try:
            manifest, digest = self._read_manifest(path)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint {checkpoint} under {self.root}") from None
        except (OSError, ValueError) as exc:
            raise CheckpointCorrupt(checkpoint, [f"manifest unreadable: {exc}"]) from None
        return self._info(path, manifest, digest)

    def verify(self, checkpoint: str) -> builtins.list[str]:
        """Everything wrong with a checkpoint (empty: sound). Sizes first, then every sha256."""
        path = self.root / checkpoint
        if not path.is_dir():
            return [f"{path} does not exist"]
        try:
            raw = (path / MANIFEST).read_bytes()
        except FileNotFoundError:
            return [f"{path}: no {MANIFEST} (a partial copy?)"]
        digest = hashlib.sha256(raw).hexdigest()
        recorded = path / MANIFEST_DIGEST
        if recorded.is_file() and recorded.read_text().split()[:1] != [digest]:
            return [f"{MANIFEST} does not match {MANIFEST_DIGEST}: the manifest was altered"]
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            return [f"{MANIFEST} unreadable: {exc.errors()[0]['msg']}"]
        problems = []
        if manifest.id != checkpoint:
            problems.append(f"{MANIFEST} names id {manifest.id}, the directory is {checkpoint}")
        for entry in manifest.files:
            file = path / entry.path
            if entry.path.startswith("/") or ".." in entry.path.split("/"):
                problems.append(f"{entry.path}: a path outside the checkpoint")
            elif not file.is_file():
                problems.append(f"{entry.path}: missing")
            elif (size := file.stat().st_size) != entry.size:
                problems.append(f"{entry.path}: {size} bytes, the manifest says {entry.size}")
        if problems:
            return problems
        for entry in manifest.files:
            if sha256_file(path / entry.path) != entry.sha256:
                problems.append(f"{entry.path}: sha256 differs from the manifest")
        return problems

    def load(self, checkpoint: str) -> Checkpoint:
        """Verify and return one checkpoint; raises CheckpointCorrupt saying what is wrong."""
        problems = self.verify(checkpoint)
        if problems:
            raise CheckpointCorrupt(checkpoint, problems)
        path = self.root / checkpoint
        manifest, digest = self._read_manifest(path)
        return Checkpoint(info=self._info(path, manifest, digest), manifest=manifest)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt newer ones are quarantined on the way.

        Also removes leftovers of a crashed save (`recover()`): call it at trainer startup.
        """
        self.recover()
        self.set_aside = []
        for info in reversed(self.list()):
            try:
                return self.load(info.id)
            except CheckpointCorrupt as exc:
                log.error("%s; moving it aside and trying the one before", exc)
                self.quarantine(info.id, exc.problems)
                self.set_aside.append(info)
        return None

    # -- removing -----------------------------------------------------------------------------

    def recover(self) -> builtins.list[str]:
        """Remove what a crash left: half-written saves and half-finished deletions.

        Only the one writer may call this: another process's save in progress looks the same.
        """
        removed: builtins.list[str] = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if path.is_dir() and path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)
                log.warning("removed %s, left by an interrupted save or delete", path)
                removed.append(path.name)
        return removed

    def quarantine(self, checkpoint: str, problems: builtins.list[str]) -> Path:
        """Move a corrupt checkpoint out of the listing, kept (with why.txt) for a human."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = self.root / f"{CORRUPT_PREFIX}{checkpoint}-{stamp}-{secrets.token_hex(2)}"
        os.rename(self.root / checkpoint, target)
        try:  # best effort: on a full disk the move aside above is what matters
            (target / "why.txt").write_text("\n".join(problems) + "\n")
        except OSError as exc:
            log.warning("%s quarantined; its why.txt was not written (%s)", checkpoint, exc)
        fsync_dir(self.root)
        return target

    def quarantined(self) -> builtins.list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(CORRUPT_PREFIX))

    def delete(self, checkpoint: str) -> int:
        """Remove a checkpoint (rename first, so a crash never leaves half of one listed).

        Returns the bytes freed.
        """
        path = self.root / checkpoint
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint {checkpoint} under {self.root}")
        return self._remove_tree(path)

    def remove_quarantined(self, path: Path) -> int:
        """Delete one of `quarantined()` for good (disk pressure); returns the bytes freed."""
        if path.parent != self.root or not path.name.startswith(CORRUPT_PREFIX):
            raise CheckpointError(f"{path} is not a quarantined checkpoint of {self.root}")
        return self._remove_tree(path)

    def _remove_tree(self, path: Path) -> int:
        trash = self.root / f"{TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
        os.rename(path, trash)
        fsync_dir(self.root)
        freed = _tree_bytes(trash)
        shutil.rmtree(trash)
        return freed


def quarantined_id(path: Path) -> str:
    """The checkpoint id of a `.corrupt-<id>-<time>-<hex>` directory."""
    return path.name.removeprefix(CORRUPT_PREFIX).rsplit("-", 2)[0]


def publish_ready(
    publisher: Publisher, info: CheckpointInfo, *, fixed_eval_em: float | None = None
) -> str:
    """Announce a written checkpoint on the bus (`checkpoint.ready`); returns the entry id."""
    return publisher.publish(
        CheckpointReady(
            checkpoint_id=info.id,
            step=info.step,
            manifest_sha256=info.manifest_sha256,
            size_bytes=info.size_bytes,
            files=info.files,
            val_loss=info.val_loss,
            fixed_eval_em=fixed_eval_em,
        )
    )
