"""Fixed validation sets: drawn once, stored, held out; the demo's data never holds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from rq import Queue

from codec.domains import generate
from codec.errors import DomainError
from codec.modes import Mode
from services.feeder.config import FeederSettings
from services.feeder.demo import problem_lines, seed_queue
from services.validation.scoring import expected_calibration_error
from services.validation.sets import (
    ensure_set,
    load_set,
    parse_sets,
    set_path,
    stored_ids,
)
from services.validation.trend import em_trend


def test_a_set_is_drawn_once_from_held_out_problems_and_read_back(tmp_path: Path) -> None:
    path = ensure_set(tmp_path, "syllogism", 1, Mode.CANONICAL, size=20)
    assert path == set_path(tmp_path, "syllogism", 1, "canonical")
    first = path.read_bytes()
    items = load_set(path)
    assert len(items) == 20 and len({i.id for i in items}) == 20
    heldout = {
        p.id for p in generate("syllogism", count=400, difficulty=1, seed=5, split="heldout")
    }
    train = {p.id for p in generate("syllogism", count=400, difficulty=1, seed=5, split="train")}
    assert not {i.id for i in items} & train
    assert heldout  # the split exists; the set's problems are on its side, as split_of says
    for line in path.read_text().splitlines():
        meta = json.loads(line)["meta"]
        assert meta["golden"] in ("valid", "invalid")
    # Stored: a second call (another size, even) reads the file instead of drawing anew.
    ensure_set(tmp_path, "syllogism", 1, Mode.CANONICAL, size=5)
    assert path.read_bytes() == first
    # Fixed seed: drawn again elsewhere, the same problems in the same order.
    again = ensure_set(tmp_path / "other", "syllogism", 1, Mode.CANONICAL, size=20)
    assert again.read_bytes() == first


def test_parse_sets_names_the_bad_part() -> None:
    assert [s.name for s in parse_sets("syllogism:1:canonical, word:2:english")] == [
        "syllogism-d1-canonical",
        "word-d2-english",
    ]
    assert parse_sets("") == []
    with pytest.raises(DomainError, match="word:x:english"):
        parse_sets("word:x:english")
    with pytest.raises(DomainError, match="mode"):
        parse_sets("word:1:klingon")


def test_demo_data_never_holds_a_validation_problem(tmp_path: Path) -> None:
    root = tmp_path / "validation"
    ensure_set(root, "syllogism", 1, Mode.CANONICAL, size=64)
    ensure_set(root, "arithmetic", 2, Mode.ENGLISH, size=64)
    held = stored_ids(root)
    assert len(held) == 128
    for domain, level in (("syllogism", 1), ("arithmetic", 2)):
        ids = [
            line["meta"]["id"]
            for line in problem_lines(domain, level, count=1000, seed=1, exclude=held)
        ]
        assert len(ids) == 1000
        assert not set(ids) & held


def test_the_exclusion_filter_itself_drops_what_it_is_given() -> None:
    # Train-split problems never meet held-out ones anyway; give the filter train ids to
    # prove it is the filter that drops them, not only the split.
    first = [
        line["meta"]["id"]
        for line in problem_lines("syllogism", 1, count=50, seed=3, exclude=set())
    ]
    banned = set(first[:25])
    kept = [
        line["meta"]["id"]
        for line in problem_lines("syllogism", 1, count=50, seed=3, exclude=banned)
    ]
    assert len(kept) == 50 and not set(kept) & banned


def test_seeding_queues_demo_files_without_validation_problems(
    r: redis.Redis, tmp_path: Path
) -> None:
    settings = FeederSettings(data_dir=tmp_path, demo_seed_examples=500, demo_shard_examples=200)
    jobs = seed_queue(r, settings, validation_sets="syllogism:1:canonical", validation_size=64)
    assert len(jobs) == 3
    queued = Queue("train-normal", connection=r).get_jobs()
    assert [j.id for j in queued] == jobs
    held = stored_ids(tmp_path / "validation")
    assert len(held) == 64
    lines = 0
    for job in queued:
        with open(job.kwargs["path"], encoding="utf-8") as handle:
            for text in handle:
                line = json.loads(text)
                assert line["meta"]["id"] not in held
                lines += 1
    assert lines == 500
    # Not again while data is waiting: a restart of `regime3 up` does not pile files up.
    assert (
        seed_queue(r, settings, validation_sets="syllogism:1:canonical", validation_size=64) == []
    )


def test_trend_rule() -> None:
    assert em_trend([], 0.5) is None
    assert em_trend([0.1, 0.2, 0.3], 0.23) == "improving"  # mean 0.2, +0.03
    assert em_trend([0.1, 0.2, 0.3], 0.21) == "stable"
    assert em_trend([0.9, 0.5, 0.5, 0.5], 0.45) == "degrading"  # only the last 3 count


def test_ece() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.95, 0.95], [False, False]) == pytest.approx(0.95)
    # Two bins: 0.25 confident and right half the time; 0.85 confident and always right.
    ece = expected_calibration_error([0.25, 0.25, 0.85, 0.85], [True, False, True, True])
    assert ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.15)
