"""Compression: canonical and encoded reasoning against English, under the default counter."""

from __future__ import annotations

from codec.codebook import whitespace_count
from codec.compression import measure
from codec.domains import DOMAINS, default_codebook


def test_targets_hold_on_every_domain() -> None:
    rows = measure(whitespace_count, default_codebook(), per_level=6, seed=1)
    assert [r.domain for r in rows] == list(DOMAINS)
    for row in rows:
        assert row.examples == 6 * len(DOMAINS[row.domain].levels)
        assert row.canonical_ratio <= 0.5, row.to_dict()
        assert row.encoded_ratio <= 0.33, row.to_dict()


def test_counter_counts_words_numbers_marks_and_codes() -> None:
    assert whitespace_count("So 3/4 of -7 apples, <E012>(ans") == 9
