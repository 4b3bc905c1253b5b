"""Read a JSONL training file as a stream of lines, each with a stable identity and a cursor."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.trainer.errors import DataFileError

BOM = b"\xef\xbb\xbf"
# Enough of the head to tell text from a binary file (archives, parquet, a model file) at once.
HEAD_BYTES = 64 << 10
READ_BUFFER = 1 << 20
DEFAULT_MAX_LINE_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class DataCursor:
    """Where reading resumes: the next unread line, and rows of its pack buffer already done.

    `offset` and `line` alone are the data cursor of the design (byte offset of the next unread
    line); `rows_done` lets the packer skip the rows of a partly trained pack buffer, which
    re-packs identically from the same offset (see `services.trainer.packing`).
    """

    offset: int = 0
    line: int = 1
    rows_done: int = 0


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of the file as bytes, without its line ending."""

    line: int  # 1-based line number
    offset: int  # byte offset of the line's first byte: with `line`, the example's identity
    data: bytes | None  # None when the line exceeded the byte limit (not kept in memory)
    size: int  # bytes the line takes in the file, newline included

    @property
    def next_offset(self) -> int:
        return self.offset + self.size

    @property
    def blank(self) -> bool:
        return self.data is not None and not self.data.strip()


def check_file(path: Path) -> int:
    """Return the size of `path` if it looks like a UTF-8 text file; else say what it is."""
    if not path.exists():
        raise DataFileError(path, "no such file", "check the path")
    if not path.is_file():
        raise DataFileError(path, "not a regular file", "give a .jsonl file")
    size = path.stat().st_size
    if size == 0:
        raise DataFileError(
            path, "the file is empty", "a training file holds one JSON object per line"
        )
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise DataFileError(
            path,
            f"a binary file (a NUL byte at offset {at})",
            "give a UTF-8 JSONL file, one JSON object per line (not an archive or parquet)",
        )
    try:
        # A multi-byte character cut by the end of the head is not an error of the file.
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if not (len(head) == HEAD_BYTES and err.start >= len(head) - 3):
            raise DataFileError(
                path,
                f"not UTF-8 text (invalid byte {head[err.start]:#04x} at offset {err.start})",
                "re-save the file as UTF-8",
            ) from None
    return size


def _at_line_start(f: BinaryIO, offset: int) -> bool:
    if offset == 0:
        return True
    f.seek(offset - 1)
    return bool(f.read(1) == b"\n")


def read_lines(
    path: Path,
    start: DataCursor | None = None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[RawLine]:
    """Yield the lines of `path` from `start`, one at a time: memory is one line, at most
    `max_line_bytes` (a longer line is skipped in chunks and yielded with `data=None`).

    Blank lines are yielded too so that line numbers stay those an editor shows.
    """
    size = check_file(path)
    start = start or DataCursor()
    if not 0 <= start.offset <= size:
        raise DataFileError(
            path,
            f"resume offset {start.offset} is outside the file ({size} bytes)",
            "the file changed since the checkpoint; start it again from the beginning",
        )
    line = start.line
    offset = start.offset
    with path.open("rb", buffering=READ_BUFFER) as f:
        if not _at_line_start(f, offset):
            raise DataFileError(
                path,
                f"resume offset {offset} (line {line}) is not the start of a line",
                "the file changed since the checkpoint; start it again from the beginning",
            )
        f.seek(offset)
        while True:
            data = f.readline(max_line_bytes + 1)
            if not data:
                return
            length = len(data)
            kept: bytes | None = data
            if length > max_line_bytes and not data.endswith(b"\n"):
                # Too long to hold: skip to the end of the line without keeping it.
                kept = None
                while not data.endswith(b"\n"):
                    data = f.readline(READ_BUFFER)
                    if not data:
                        break
                    length += len(data)
            if kept is not None:
                kept = kept.rstrip(b"\r\n")
                if offset == 0 and kept.startswith(BOM):
                    # Windows editors start UTF-8 files with a byte-order mark; it is not data.
                    kept = kept[len(BOM) :]
            yield RawLine(line=line, offset=offset, data=kept, size=length)
            offset += length
            line += 1
