"""What a dropped file's name and folder say: take it or not yet, its priority, `.again`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

PRIORITY_FOLDERS = ("high", "normal", "low")
PRIORITY_MARKERS = frozenset(PRIORITY_FOLDERS)
AGAIN_MARKER = "again"
DATASET_SUFFIX = ".jsonl"
# Names that say "still being written" (or an editor's scratch file): never taken, never
# rejected; the file is taken when it is renamed to its final name.
IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".swp", "~")


@dataclass(frozen=True)
class DropName:
    priority: str  # high, normal or low
    again: bool  # queue even if these bytes were queued before


def in_progress(name: str) -> bool:
    """Hidden files and names of unfinished writes: left alone until renamed."""
    return name.startswith((".", "~")) or name.lower().endswith(IN_PROGRESS_SUFFIXES)


def parse(path: PurePath, folder_priority: str = "normal") -> DropName:
    """Markers are dot-separated words before `.jsonl`, in any order: `a.high.again.jsonl`.

    A priority in the name wins over the folder's: it was chosen for this one file.
    """
    words = path.name[: -len(DATASET_SUFFIX)].split(".") if is_dataset(path) else []
    named: str | None = None
    again = False
    # Read from the end, so a dot inside the real name (`v1.2.jsonl`) is not a marker.
    while len(words) > 1 and words[-1].lower() in PRIORITY_MARKERS | {AGAIN_MARKER}:
        word = words.pop().lower()
        if word == AGAIN_MARKER:
            again = True
        elif named is None:  # the word nearest `.jsonl` wins: `a.low.high.jsonl` is high
            named = word
    return DropName(priority=named or folder_priority, again=again)


def is_dataset(path: PurePath) -> bool:
    return path.name.lower().endswith(DATASET_SUFFIX)
