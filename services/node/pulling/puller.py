"""Pulling a checkpoint from the gateway: manifest first, each file resumable and sha256-checked.

Files land in `<models_dir>/.staging-<id>/`, which nothing ever loads. Each file is hashed
while it streams in (a resumed file has its existing bytes hashed first), its size and sha256
must match the manifest, and the manifest itself must match the digest `checkpoint.ready`
announced. Only when every file is verified is the staging directory renamed to
`<models_dir>/<id>/`: a directory under that name is always complete.

An interrupted transfer keeps what arrived. The same pull retries at once with
`Range: bytes=<have>-`, and a later pull (the watcher's next delivery, or after a restart)
resumes from the staging copy the same way, so a checkpoint is never fetched twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydantic import ValidationError

from checkpoints.durable import fsync_dir, fsync_dirs, sha256_file
from checkpoints.manifest import (
    MANIFEST,
    MANIFEST_DIGEST,
    FileEntry,
    Manifest,
    artifact_path,
    parse_id,
)

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
PULLED = "pulled.json"  # what this node fetched and verified, and which files it skipped
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MANIFEST_VERSION = 1  # the newest manifest layout this reader understands
# Training state a serving node never reads: AdamW's moments alone are twice the weights.
TRAINING_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pt")


class PullError(Exception):
    """A checkpoint that could not be pulled; `reason` says what, where and what to do."""

    def __init__(self, checkpoint_id: str, reason: str) -> None:
        self.checkpoint_id = checkpoint_id
        self.reason = reason
        super().__init__(f"pull of checkpoint {checkpoint_id} failed: {reason}")


@dataclass(frozen=True)
class PullResult:
    checkpoint_id: str
    path: Path  # the verified directory (never the staging one)
    manifest: Manifest
    bytes: int  # size of the files kept: what the node has on disk for this checkpoint
    fetched_bytes: int  # what crossed the network in this pull
    resumed_bytes: int  # not fetched again: Range offsets, plus files complete in staging
    download_seconds: float
    already_present: bool = False  # a verified copy existed; nothing was fetched


@dataclass
class _Tally:
    fetched: int = 0
    resumed: int = 0
    files: list[str] = field(default_factory=list)


def _etag_digest(value: str | None) -> str | None:
    """The sha256 inside an ETag header (`"<hex>"` or `W/"<hex>"`); None if it holds none.

    Only a 64-hex-digit tag is compared: a server that tags by mtime and size says nothing
    about content, and the hash of the bytes decides anyway.
    """
    if not value:
        return None
    tag = value.removeprefix("W/").strip('"').lower()
    return tag if SHA256_HEX.fullmatch(tag) else None


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


class _Sink:
    """Writes and hashes received bytes on two threads of their own, each in order.

    Receiving, writing and hashing then overlap (file writes and hashlib release the GIL on
    large buffers), so a pull runs near the slowest of network and SHA-256 rather than
    their sum. Leaving the block writes everything received, even when the transfer broke,
    so `have` always equals the bytes on disk; then it fsyncs.
    """

    BLOCK = 1 << 20  # bytes handed to the threads at once
    DEPTH = 16  # blocks in flight before the receiver waits
    # Flushed to disk as it goes, on the writer thread: the fsync before the rename then
    # waits for the last few MiB, not the whole file (0.46 s of a 2.2 s pull of 1.2 GB).
    SYNC_EVERY = 64 << 20

    def __init__(self, file: BinaryIO, hasher: Any) -> None:
        self.file = file
        self.hasher = hasher
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="pull-write")
        self.digester = ThreadPoolExecutor(1, thread_name_prefix="pull-hash")
        self.pending: deque[tuple[Future[Any], Future[Any]]] = deque()
        self.buffer = bytearray()
        self.unsynced = 0

    def _write(self, block: bytes) -> None:
        self.file.write(block)
        self.unsynced += len(block)
        if self.unsynced >= self.SYNC_EVERY:
            self.file.flush()
            os.fdatasync(self.file.fileno())
            self.unsynced = 0

    def _submit(self) -> None:
        block = bytes(self.buffer)
        self.buffer.clear()
        self.pending.append(
            (
                self.writer.submit(self._write, block),
                self.digester.submit(self.hasher.update, block),
            )
        )
        if len(self.pending) > self.DEPTH:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        write, digest = self.pending.popleft()
        write.result()
        digest.result()

    def put(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) >= self.BLOCK:
            self._submit()

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.buffer:
                self._submit()
            while self.pending:
                self._wait_oldest()
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self.writer.shutdown(wait=True)
            self.digester.shutdown(wait=True)


def staging_dir(models_dir: Path, checkpoint_id: str) -> Path:
    return models_dir / f"{STAGING_PREFIX}{checkpoint_id}"


class Puller:
    """Downloads checkpoints from one gateway into `models_dir`. Safe to reuse; not threadsafe.

    `skip` names manifest paths not to fetch (training state); `retries` is how many times
    one pull resumes a file after a broken connection before giving up.
    """

    def __init__(
        self,
        *,
        base_url: str,
        models_dir: Path,
        token: str | None = None,
        skip: Iterable[str] = TRAINING_ONLY_FILES,
        retries: int = 3,
        timeout_s: float = 30.0,
        chunk_bytes: int = 1 << 20,
        retry_pause_s: float = 0.2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.models_dir = Path(models_dir)
        self.skip = frozenset(skip)
        self.retries = retries
        self.chunk_bytes = chunk_bytes
        self.retry_pause_s = retry_pause_s
        headers = {"Accept-Encoding": "identity"}  # hash the bytes the manifest describes
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Puller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pull -----------------------------------------------------------------------------

    def pull(self, checkpoint_id: str, *, manifest_sha256: str) -> PullResult:
        """Fetch and verify one checkpoint; returns where it now lies. Raises PullError."""
        if parse_id(checkpoint_id) is None:
            raise PullError(
                checkpoint_id, "not a checkpoint id (expected step-NNNNNNNN[-rN]); not fetched"
            )
        base = artifact_path(checkpoint_id)  # under the gateway's base URL
        started = time.perf_counter()
        final = self.models_dir / checkpoint_id
        present = self._verified_copy(final, manifest_sha256)
        if present is not None:
            manifest, kept = present
            return PullResult(checkpoint_id, final, manifest, kept, 0, 0, 0.0, True)

        raw = self._get_manifest(checkpoint_id, base + MANIFEST)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != manifest_sha256:
            raise PullError(
                checkpoint_id,
                f"manifest mismatch: {MANIFEST} from the gateway has sha256 {digest[:12]}…, "
                f"checkpoint.ready announced {manifest_sha256[:12]}…; the trainer's copy "
                "changed after it was announced (or the event is stale): re-save it",
            )
        manifest = self._parse_manifest(checkpoint_id, raw)

        staging = staging_dir(self.models_dir, checkpoint_id)
        staging.mkdir(parents=True, exist_ok=True)
        tally = _Tally()
        wanted = [entry for entry in manifest.files if entry.path not in self.skip]
        for entry in wanted:
            self._fetch(checkpoint_id, base, entry, staging, tally)
        kept = sum(entry.size for entry in wanted)
        self._publish(staging, final, raw, digest, manifest)
        seconds = time.perf_counter() - started
        log.info(
            "pulled %s: %d files, %d bytes kept, %d fetched, %d resumed, %.2f s",
            checkpoint_id,
            len(wanted),
            kept,
            tally.fetched,
            tally.resumed,
            seconds,
        )
        return PullResult(
            checkpoint_id, final, manifest, kept, tally.fetched, tally.resumed, seconds
        )

    # -- pieces -------------------------------------------------------------------------------

    def _verified_copy(self, final: Path, manifest_sha256: str) -> tuple[Manifest, int] | None:
        """A previous pull's directory, if its manifest is this one and every size matches.

        Its files were hashed when it was pulled and it was renamed into place only then;
        sizes catch a copy someone truncated since, without re-hashing gigabytes.
        """
        try:
            raw = (final / MANIFEST).read_bytes()
            pulled = json.loads((final / PULLED).read_text())
        except (OSError, ValueError):
            return None
        if hashlib.sha256(raw).hexdigest() != manifest_sha256:
            return None
        manifest = Manifest.model_validate_json(raw)
        kept = 0
        for entry in manifest.files:
            if entry.path not in pulled.get("files", []):
                continue
            file = final / entry.path
            if not file.is_file() or file.stat().st_size != entry.size:
                return None
            kept += entry.size
        return manifest, kept

    def _get_manifest(self, checkpoint_id: str, url: str) -> bytes:
        try:
            response = self.client.get(url)
        except httpx.HTTPError as exc:
            raise PullError(
                checkpoint_id,
                f"gateway {self.base_url} unreachable for {url} ({type(exc).__name__}: {exc}); "
                "check R3_GATEWAY_URL and that the gateway runs",
            ) from exc
        self._check_status(checkpoint_id, url, response)
        return response.content

    def _check_status(self, checkpoint_id: str, url: str, response: httpx.Response) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status in (401, 403):
            raise PullError(
                checkpoint_id,
                f"the gateway refused the token for {url} (HTTP {status}); set R3_NODE_TOKEN "
                "on the node to the gateway's R3_NODE_TOKEN (or R3_ADMIN_TOKEN)",
            )
        if status == 404:
            raise PullError(
                checkpoint_id,
                f"the gateway has no {url} (HTTP 404): the checkpoint was pruned on the trainer "
                "host, or the manifest lists a file it lacks",
            )
        raise PullError(checkpoint_id, f"HTTP {status} from the gateway for {url}")

    def _parse_manifest(self, checkpoint_id: str, raw: bytes) -> Manifest:
        try:
            version = json.loads(raw).get("version")
        except (ValueError, AttributeError) as exc:
            raise PullError(checkpoint_id, f"{MANIFEST} is not a JSON object ({exc})") from exc
        if isinstance(version, int) and version > MANIFEST_VERSION:
            raise PullError(
                checkpoint_id,
                f"{MANIFEST} has version {version}, this node reads up to {MANIFEST_VERSION}: "
                "upgrade the node",
            )
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise PullError(
                checkpoint_id, f"manifest mismatch: {MANIFEST} unreadable ({exc.errors()[0]})"
            ) from exc
        problems = []
        if manifest.id != checkpoint_id:
            problems.append(f"it names id {manifest.id}")
        bad = [e.path for e in manifest.files if not _safe_relative(e.path)]
        if bad:
            problems.append(f"paths outside the checkpoint: {bad}")
        if sum(e.size for e in manifest.files) != manifest.total_bytes:
            problems.append("its sizes do not add up to total_bytes")
        if problems:
            raise PullError(checkpoint_id, f"manifest mismatch: {'; '.join(problems)}")
        return manifest

    def _fetch(
        self, checkpoint_id: str, base: str, entry: FileEntry, staging: Path, tally: _Tally
    ) -> None:
        """One file into staging, resuming what is there; raises PullError unless verified."""
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        hasher, have = self._existing(dest, entry.size)
        complete_in_staging = have == entry.size  # from an earlier pull: no request at all
        url = base + entry.path
        last_error = ""
        for attempt in range(self.retries + 1):
            if have == entry.size:
                break
            if attempt:
                time.sleep(self.retry_pause_s * attempt)
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self.client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 416:  # asked past its end: the source is short
                        raise PullError(
                            checkpoint_id,
                            f"truncated file: the gateway's {entry.path} ends before byte "
                            f"{have}, the manifest says {entry.size} bytes; the checkpoint "
                            "on the trainer host is damaged (verify it there)",
                        )
                    self._check_status(checkpoint_id, url, response)
                    served = _etag_digest(response.headers.get("etag"))
                    if served is not None and served != entry.sha256:
                        raise PullError(
                            checkpoint_id,
                            f"manifest mismatch: the gateway's {entry.path} has ETag "
                            f"{served[:12]}…, the manifest says {entry.sha256[:12]}…",
                        )
                    if have and response.status_code == 206:
                        self._check_range(checkpoint_id, entry, response, have)
                        tally.resumed += have
                    elif have:  # a 200 to a Range request: the server sends it whole again
                        hasher, have = hashlib.sha256(), 0
                    mode = "ab" if have else "wb"
                    with dest.open(mode) as f, _Sink(f, hasher) as sink:
                        for chunk in response.iter_raw():  # as received: a cut loses nothing
                            if have + len(chunk) > entry.size:
                                raise PullError(
                                    checkpoint_id,
                                    f"{entry.path}: the gateway sent more than the "
                                    f"manifest's {entry.size} bytes",
                                )
                            sink.put(chunk)
                            have += len(chunk)
                            tally.fetched += len(chunk)
            except httpx.HTTPError as exc:  # a cut connection, a timeout: resume from `have`
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s %s: transfer broke at %d of %d bytes (%s); resuming",
                    checkpoint_id,
                    entry.path,
                    have,
                    entry.size,
                    last_error,
                )
        if have != entry.size:
            raise PullError(
                checkpoint_id,
                f"download interrupted: {entry.path} has {have} of {entry.size} bytes after "
                f"{self.retries + 1} attempts ({last_error or 'the response ended early'}); "
                "the partial copy stays in staging and the next attempt resumes it",
            )
        if hasher.hexdigest() != entry.sha256:
            dest.unlink()  # a corrupt byte in transit heals on the next, fresh fetch
            raise PullError(
                checkpoint_id,
                f"sha256 mismatch: {entry.path} hashed to {hasher.hexdigest()[:12]}…, the "
                f"manifest says {entry.sha256[:12]}…; the file was deleted from staging "
                "and is fetched again on the next attempt",
            )
        if complete_in_staging:
            tally.resumed += entry.size
        tally.files.append(entry.path)

    def _existing(self, dest: Path, size: int) -> tuple[hashlib._Hash, int]:
        """The hasher primed with a partial file's bytes, and how many there are."""
        hasher = hashlib.sha256()
        try:
            have = dest.stat().st_size
        except FileNotFoundError:
            return hasher, 0
        if have > size:
            dest.unlink()
            return hasher, 0
        with dest.open("rb") as f:
            while chunk := f.read(self.chunk_bytes):
                hasher.update(chunk)
        return hasher, have

    def _check_range(
        self, checkpoint_id: str, entry: FileEntry, response: httpx.Response, have: int
    ) -> None:
        content_range = response.headers.get("content-range", "")
        expected = f"bytes {have}-{entry.size - 1}/{entry.size}"
        if content_range != expected:
            raise PullError(
                checkpoint_id,
                f"{entry.path}: asked for bytes {have}- and the gateway answered "
                f"Content-Range {content_range!r} (expected {expected!r})",
            )

    def _publish(
        self, staging: Path, final: Path, raw: bytes, digest: str, manifest: Manifest
    ) -> None:
        """Manifest and record into staging, then one rename makes the directory visible."""
        (staging / MANIFEST).write_bytes(raw)
        (staging / MANIFEST_DIGEST).write_text(f"{digest}  {MANIFEST}\n")
        files = [e.path for e in manifest.files if e.path not in self.skip]
        skipped = [e.path for e in manifest.files if e.path in self.skip]
        record = {"id": manifest.id, "manifest_sha256": digest, "files": files, "skipped": skipped}
        (staging / PULLED).write_text(json.dumps(record, indent=2) + "\n")
        fsync_dirs(staging)
        if final.exists():
            if (final / PULLED).is_file():  # an earlier pull of ours under the same id
                shutil.rmtree(final)
            else:  # copied in by hand (rsync): never deleted, set aside with a time stamp
                aside = final.with_name(f".replaced-{final.name}-{int(time.time())}")
                os.rename(final, aside)
                log.warning("%s was not pulled by this node: kept as %s", final, aside)
        os.rename(staging, final)
        fsync_dir(self.models_dir)
        _just_verified[final.resolve()] = _stamp(final, files)


# Copies this process pulled and hashed itself, with each file's (size, mtime) then: the
# activation right after a pull need not hash 1.2 GB a second time. A restart starts empty,
# so what a node serves after a restart is always hashed again.
_just_verified: dict[Path, tuple[tuple[str, int, int], ...]] = {}


def _stamp(path: Path, files: Iterable[str]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for name in sorted(files):
        st = (path / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def verify_pulled(path: Path) -> list[str] | None:
    """What is wrong with a copy this node pulled (empty: sound, every byte hashed again);
    None when `path` is no pull of ours (no pulled.json): nothing to check it against.

    A copy was verified when it arrived, but a disk can rot and a person can edit it; what
    the node serves after a restart must be what the trainer wrote. Only a copy this very
    process pulled, untouched since (same sizes and mtimes), skips the second hashing.
    """
    try:
        pulled = json.loads((path / PULLED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return [f"{PULLED} unreadable ({exc})"]
    try:
        raw = (path / MANIFEST).read_bytes()
    except OSError as exc:
        return [f"{MANIFEST} unreadable ({exc})"]
    if hashlib.sha256(raw).hexdigest() != pulled.get("manifest_sha256"):
        return [f"{MANIFEST} differs from the one pulled (sha256 recorded in {PULLED})"]
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        return [f"{MANIFEST} unreadable: {exc.errors()[0]['msg']}"]
    kept = set(pulled.get("files", []))
    remembered = _just_verified.pop(path.resolve(), None)
    try:
        if remembered is not None and remembered == _stamp(path, kept):
            return []
    except OSError:
        pass  # a file went missing: the full check below says which
    problems = []
    for entry in manifest.files:
        if entry.path not in kept:
            continue
        file = path / entry.path
        if not file.is_file():
            problems.append(f"{entry.path}: missing")
        elif file.stat().st_size != entry.size:
            problems.append(
                f"{entry.path}: {file.stat().st_size} bytes, the manifest says {entry.size}"
            )
        elif sha256_file(file) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    return problems


def set_aside(path: Path, problems: list[str]) -> Path:
    """Move a corrupt pulled copy out of the way (kept for a human, with why.txt), so the
    next pull of that id fetches it afresh instead of trusting it."""
    aside = path.with_name(f".corrupt-{path.name}-{int(time.time())}")
    os.rename(path, aside)
    (aside / "why.txt").write_text("\n".join(problems) + "\n")
    return aside


def discard_staging(models_dir: Path, checkpoint_id: str) -> bool:
    """Remove a checkpoint's partial download (after it was dead-lettered); True if one existed."""
    path = staging_dir(models_dir, checkpoint_id)
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True
