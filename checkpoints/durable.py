"""Durable files: fsync of files and directories, and the sha256 of a file, one way everywhere.

A directory renamed into place means "complete" only if its files and its directory entries
reached the disk first; every such writer (checkpoints, pulled copies, the dataset store, the
embedded model) uses these.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks (memory flat whatever the size)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_and_sync(path: Path) -> str:
    """sha256 of the file, then fsync it: one open, and the pages are hot from the write."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory, so the names created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(root: Path) -> None:
    """fsync every regular file directly in `root`."""
    for path in root.iterdir():
        if path.is_file():
            fsync_file(path)


def fsync_dirs(root: Path) -> None:
    """fsync `root` and every directory under it, deepest first."""
    for sub in sorted({p.parent for p in root.rglob("*")} | {root}, reverse=True):
        fsync_dir(sub)


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it before returning."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def append_synced(path: Path, text: str) -> None:
    """Append `text` to `path` and fsync it, so a kill -9 right after cannot lose it."""
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
