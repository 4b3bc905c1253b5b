"""The multi-stream SSE cursor: parsing, encoding, and the gateway staying torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.gateway import cursor
from tests.gateway.rig import ROOT


def test_round_trip_in_canonical_order() -> None:
    positions = {"alerts": "5-0", "training": "1732412345678-3", "jobs": "0-0"}
    text = cursor.encode(positions)
    assert text == "training:1732412345678-3,jobs:0-0,alerts:5-0"
    assert cursor.parse(text, ["training", "jobs", "alerts"]) == positions


def test_streams_not_followed_are_dropped_and_missing_ones_absent() -> None:
    assert cursor.parse("training:7-1,jobs:3-0", ["training", "eval"]) == {"training": "7-1"}


def test_zero_and_a_bare_entry_id_apply_to_every_stream() -> None:
    assert cursor.parse("0", ["training", "jobs"]) == {"training": "0-0", "jobs": "0-0"}
    assert cursor.parse("1732412345678", ["jobs"]) == {"jobs": "1732412345678-0"}
    assert cursor.parse("17-4", ["alerts"]) == {"alerts": "17-4"}


@pytest.mark.parametrize("bad", ["training:abc", "nope:1-0", "training", "training:1-0,x", "-1"])
def test_bad_cursors_say_what_is_expected(bad: str) -> None:
    with pytest.raises(cursor.CursorError):
        cursor.parse(bad, ["training"])


def test_entry_ids_compare_numerically() -> None:
    assert cursor.id_key("1732412345678-10") > cursor.id_key("1732412345678-9")
    assert cursor.id_key("1732412345679-0") > cursor.id_key("1732412345678-99")


def test_the_gateway_never_imports_torch() -> None:
    code = "import sys, services.gateway.app; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616-0",  # 2**64: past what Redis can hold
        "5-18446744073709551616",
        "training:18446744073709551616-0",
        "5-0\n",  # a trailing newline would cut the SSE framing of the next frame's id
        "training:5-0\n",
        "training:5-0\n,jobs:1-0",
        "0\n",
    ],
)
def test_a_cursor_past_u64_or_with_a_newline_is_refused(text: str) -> None:
    with pytest.raises(cursor.CursorError):
        cursor.parse(text, ["training", "jobs"])


def test_the_largest_entry_id_is_accepted() -> None:
    top = f"{2**64 - 1}-{2**64 - 1}"
    assert cursor.parse(f"training:{top}", ["training"]) == {"training": top}
