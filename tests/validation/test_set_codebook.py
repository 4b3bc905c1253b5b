"""A stored coded validation set is scored in the codebook the model was taught, not only the
built-in one it was drawn with."""

from __future__ import annotations

from pathlib import Path

import pytest

from codec.codebook import CODE, Codebook
from codec.domains import default_codebook
from codec.evaluate import split_output
from services.validation.sets import ensure_set, load_set


@pytest.mark.parametrize("mode", ["encoded", "assorted"])
def test_a_coded_reference_is_recoded_in_the_runs_codebook(tmp_path: Path, mode: str) -> None:
    builtin = default_codebook()
    mine = Codebook(builtin.fragments[:40])  # the same codes mean fewer fragments here
    stored = load_set(ensure_set(tmp_path, "syllogism", 1, mode, 8))
    canonical = load_set(ensure_set(tmp_path, "syllogism", 1, "canonical", 8))
    # Stamped when the reasoning holds codes (an assorted one with m = 0 holds none).
    assert {item.codebook for item in stored} - {None} == {builtin.version}
    assert sum(item.codebook is not None for item in stored) >= 4
    for item, plain in zip(stored, canonical, strict=True):
        if item.codebook is None:
            assert item.in_codebook(mine, (builtin, mine)) is item
            continue
        mine_item = item.in_codebook(mine, (builtin, mine))
        assert mine_item.codebook == mine.version and mine_item.golden == item.golden
        reasoning = split_output(mine_item.messages[1]["content"])
        expected = split_output(plain.messages[1]["content"])
        assert reasoning is not None and expected is not None
        assert CODE.search(reasoning[0])
        assert mine.decode(reasoning[0]) == expected[0]  # the same canonical reasoning
        assert reasoning[1] == expected[1]  # and the same answer
        # Back in the built-in codebook it is the stored reference again.
        assert mine_item.in_codebook(builtin, (builtin, mine)) == item


def test_a_reference_in_an_unknown_codebook_or_without_codes_is_kept(tmp_path: Path) -> None:
    builtin = default_codebook()
    other = Codebook(builtin.fragments[:10])
    [item] = load_set(ensure_set(tmp_path, "syllogism", 1, "encoded", 1))
    assert item.in_codebook(other, (other,)) is item  # its own codebook is not known
    [plain] = load_set(ensure_set(tmp_path, "syllogism", 1, "canonical", 1))
    assert plain.codebook is None and plain.in_codebook(other, (builtin, other)) is plain
