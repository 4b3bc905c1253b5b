from __future__ import annotations

from pathlib import PurePath

import pytest

from services.inbox.markers import DropName, in_progress, parse


@pytest.mark.parametrize(
    ("name", "folder", "expected"),
    [
        ("math.jsonl", "normal", DropName("normal", again=False)),
        ("math.jsonl", "high", DropName("high", again=False)),
        ("math.high.jsonl", "normal", DropName("high", again=False)),
        ("math.LOW.jsonl", "normal", DropName("low", again=False)),
        ("math.high.jsonl", "low", DropName("high", again=False)),  # the name wins
        ("math.again.jsonl", "normal", DropName("normal", again=True)),
        ("math.high.again.jsonl", "normal", DropName("high", again=True)),
        ("math.again.low.jsonl", "high", DropName("low", again=True)),
        ("math.low.high.jsonl", "normal", DropName("high", again=False)),  # nearest wins
        ("v1.2.jsonl", "normal", DropName("normal", again=False)),
        ("high.jsonl", "low", DropName("low", again=False)),  # the whole name is no marker
        ("notes.high.txt", "normal", DropName("normal", again=False)),
    ],
)
def test_priority_and_again_from_name_and_folder(
    name: str, folder: str, expected: DropName
) -> None:
    assert parse(PurePath("/inbox") / name, folder) == expected


@pytest.mark.parametrize(
    ("name", "waiting"),
    [
        ("data.jsonl", False),
        ("data.jsonl.part", True),
        ("data.jsonl.PART", True),
        ("data.jsonl.tmp", True),
        ("data.jsonl.crdownload", True),
        (".data.jsonl.swp", True),
        (".hidden.jsonl", True),
        ("data.jsonl~", True),
        ("partial-results.jsonl", False),
    ],
)
def test_unfinished_and_hidden_names_are_left_alone(name: str, waiting: bool) -> None:
    assert in_progress(name) is waiting
