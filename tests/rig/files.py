"""Damaging a file on purpose, as a bad disk or a broken copy would."""

from __future__ import annotations

from pathlib import Path


def flip_byte(path: Path, at: int) -> None:
    """Flip the lowest bit of the byte at offset `at`, in place."""
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
