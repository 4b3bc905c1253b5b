"""The dataset store: queued files kept by content hash, checked to be JSONL on the way in.

Every way a file reaches the trainer (`regime3 enqueue`, the inbox, an upload) copies it here
first, so a job never reads a file someone may still be editing, and the same bytes dropped
twice are one dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """A file that cannot be queued; the message says which file, where, and what to do."""


BOM = "\ufeff"


def json_line_problem(exc: BaseException) -> str:
    """Why `json.loads` refused a line, in words shared by every entry point and the trainer.

    Besides JSONDecodeError, json.loads raises RecursionError for nesting deeper than the
    interpreter's stack and ValueError for an integer of more than 4,300 digits (CPython's
    int_max_str_digits): those are bad lines too, never a crash of whoever reads them.
    """
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply to parse (over ~1,000 levels of [ or {)"
    first = str(exc).split(";")[0].strip() or type(exc).__name__
    return first  # e.g. "Exceeds the limit (4300 digits) for integer string conversion..."


def loads_line(text: str, *, first: bool = False) -> object:
    """One JSONL line parsed; a UTF-8 byte-order mark before the first line is not data.

    Raises ValueError or RecursionError (see `json_line_problem` for the words).
    """
    if first and text.startswith(BOM):
        text = text[len(BOM) :]
    return json.loads(text)


@dataclass(frozen=True)
class CheckedFile:
    lines: int  # non-blank lines, each a JSON object
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class StoredDataset:
    sha256: str
    path: Path  # inside the store
    name: str  # the name it arrived with
    lines: int
    size_bytes: int
    new: bool  # False when these bytes were already stored


def check_jsonl(path: Path, *, shown_as: Path | None = None) -> CheckedFile:
    """Stream the file once: exists, not empty, text, every non-blank line a JSON object.

    Memory stays flat whatever the size (one line at a time). Deeper checks (roles,
    thinking markers, lengths in tokens) are the trainer's validation, before any step.
    `shown_as` names the file in messages when `path` is a temporary copy of it.
    """
    name = shown_as or path
    if not path.exists():
        raise DatasetError(f"{name}: no such file")
    if path.is_dir():
        raise DatasetError(f"{name}: is a directory; give a .jsonl file")
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"{name}: the file is empty; a dataset needs one JSON object a line")
    digest = hashlib.sha256()
    lines = 0
    with path.open("rb") as f:
        head = f.read(8192)
        if b"\x00" in head:
            raise DatasetError(
                f"{name}: looks binary (NUL bytes in the first 8 KiB); "
                "a dataset is UTF-8 text, one JSON object a line"
            )
        f.seek(0)
        for number, raw in enumerate(f, start=1):
            digest.update(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{name}:{number}: not UTF-8 (byte {exc.start} of the line); "
                    "save the file as UTF-8"
                ) from None
            if not text.strip() or (number == 1 and text.lstrip(BOM).strip() == ""):
                continue
            try:
                value = loads_line(text, first=number == 1)
            except (ValueError, RecursionError) as exc:
                raise DatasetError(
                    f"{name}:{number}: not JSON ({json_line_problem(exc)}); "
                    "JSONL is one complete JSON object per line"
                ) from None
            if not isinstance(value, dict):
                raise DatasetError(
                    f"{name}:{number}: a JSON {type(value).__name__}, not an object; "
                    'each line must be an object like {"messages": [...]}'
                )
            lines += 1
    if lines == 0:
        raise DatasetError(f"{name}: only blank lines; a dataset needs one JSON object a line")
    return CheckedFile(lines=lines, size_bytes=size, sha256=digest.hexdigest())


class DatasetStore:
    """`<root>/<sha256>.jsonl`, written under a temporary name and renamed when complete."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / f"{sha256}.jsonl"

    def add(
        self, source: Path, *, move: bool = False, shown_as: str | Path | None = None
    ) -> StoredDataset:
        """Copy (or move) `source` in, then check and hash that copy; the same bytes are
        stored once. Checking the copy, not the source, means what is stored is what was
        checked even if someone writes to the source meanwhile.

        On any failure (a bad line, a full disk, an error nobody foresaw) nothing is stored
        and a moved source is put back where it was: the store never loses a user's file.
        `shown_as` names the file in messages (default: `source`'s name, never a server path).
        """
        name = Path(shown_as).name if shown_as is not None else source.name
        if not source.is_file():
            check_jsonl(source, shown_as=Path(name))  # raises: missing or a directory
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        moved = False
        try:
            if move:
                shutil.move(source, tmp)
                moved = True
            else:
                shutil.copyfile(source, tmp)
            checked = check_jsonl(tmp, shown_as=Path(name))
            target = self.path_for(checked.sha256)
            new = not target.exists()
            if new:
                os.replace(tmp, target)
            moved = False  # stored: the user's bytes are safe in the store
        except BaseException:
            if moved:
                # Put the user's file back; only once that worked may the copy go.
                shutil.move(tmp, source)
                moved = False
            raise
        finally:
            if not moved:
                tmp.unlink(missing_ok=True)
        return StoredDataset(
            sha256=checked.sha256,
            path=target,
            name=name,
            lines=checked.lines,
            size_bytes=checked.size_bytes,
            new=new,
        )
