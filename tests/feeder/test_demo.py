"""The demo's data and recipe: a transitional demo that leaves English, budgets that fit English
answers, and a recipe that never beats what the user set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import redis
from rq import Queue

from bus import keys
from codec.modes import Mode
from services.feeder.config import FeederSettings
from services.feeder.demo import (
    DEMO_TRAINER_ENV,
    apply_demo_recipe,
    demo_eval_sets,
    seed_queue,
    user_value,
    user_variables,
)
from services.feeder.feeder import Feeder
from services.validation.config import ValidationSettings
from services.validation.scorer import answer_budget
from services.validation.sets import ensure_set, load_set


def _shard_modes(r: redis.Redis) -> list[Counter[str]]:
    """The modes of each seeded file's lines, in the order the trainer takes the files."""
    out = []
    for job in Queue("train-normal", connection=r).get_jobs():
        lines = Path(job.kwargs["path"]).read_text(encoding="utf-8").splitlines()
        out.append(Counter(json.loads(line)["meta"]["mode"] for line in lines))
    return out


def test_a_transitional_demo_s_seeded_data_ends_mostly_encoded(
    r: redis.Redis, tmp_path: Path
) -> None:
    settings = FeederSettings(
        data_dir=tmp_path,
        demo_mode="transitional",
        demo_seed_examples=1200,
        demo_shard_examples=300,
    )
    # The curriculum is sized to the seeded data (it was 200,000 examples over 20,000 seeded:
    # the run never left English).
    assert settings.curriculum_total == 1200
    # The validation sets of a transitional demo exist (a set of mode 'transitional' crashed).
    jobs = seed_queue(r, settings, validation_sets=demo_eval_sets(settings), validation_size=8)
    assert len(jobs) == 4
    shards = _shard_modes(r)
    assert [sum(c.values()) for c in shards] == [300] * 4
    first, last = shards[0], shards[-1]
    assert first[Mode.ENGLISH] / 300 >= 0.75, first
    assert last[Mode.ENCODED] / 300 >= 0.75, last
    assert sum(c[Mode.CANONICAL] for c in shards) > 0, shards  # through canonical
    total = sum(shards, Counter())
    assert total[Mode.ENCODED] > total[Mode.ENGLISH] / 2, total
    # The feeder's generated data continues after the seeded examples: past the end, encoded.
    assert r.hget(keys.FEEDER_STATUS, "seeded_examples") == b"1200"
    assert {Feeder(r, settings).mode_now() for _ in range(20)} == {Mode.ENCODED}


def test_an_explicit_curriculum_length_still_wins(tmp_path: Path) -> None:
    settings = FeederSettings(data_dir=tmp_path, curriculum_examples=50_000)
    assert settings.curriculum_total == 50_000
    assert FeederSettings(data_dir=tmp_path, demo_seed_examples=0).curriculum_total == (
        FeederSettings(data_dir=tmp_path).feeder_max_queue
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("canonical", "syllogism:1:canonical"),
        ("english", "syllogism:1:english"),
        ("encoded", "syllogism:1:encoded"),
        # English first: its set's budget covers the English answers the run starts with.
        ("transitional", "syllogism:1:english"),
    ],
)
def test_the_demo_s_eval_set_is_one_the_scorer_can_draw(
    tmp_path: Path, mode: str, expected: str
) -> None:
    settings = FeederSettings(data_dir=tmp_path, demo_mode=mode)  # type: ignore[arg-type]
    assert demo_eval_sets(settings) == expected
    _, level, set_mode = expected.split(":")
    assert ensure_set(tmp_path, "syllogism", int(level), set_mode, 4).is_file()


def test_the_recipe_s_budgets_fit_the_longest_english_answer(
    embedded_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    items = load_set(ensure_set(tmp_path, "syllogism", 1, "english", 64))
    # The golden turn's tokens and the end of turn, as the scorer counts them.
    lengths = [len(tokenizer(i.messages[-1]["content"])["input_ids"]) + 1 for i in items]
    longest = max(lengths)
    assert longest > 96, longest  # what the old recipe's R3_EVAL_MAX_TOKENS=96 cut
    ceiling = int(DEMO_TRAINER_ENV.get("R3_EVAL_MAX_TOKENS", ValidationSettings().eval_max_tokens))
    assert answer_budget(lengths, ceiling=ceiling) > longest
    assert int(DEMO_TRAINER_ENV["R3_SAMPLE_MAX_NEW_TOKENS"]) >= longest + 16


def test_the_recipe_leaves_every_variable_the_user_set(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("R3_LEARNING_RATE=1e-4\nR3_FIXED_EVAL_SETS=arithmetic:2:english\n")
    env = {"R3_SAMPLE_MAX_NEW_TOKENS": "77", "PATH": "/bin"}
    settings = FeederSettings(data_dir=tmp_path, demo_mode="transitional")
    applied = apply_demo_recipe(env, settings, env_file=env_file)
    assert env["R3_SAMPLE_MAX_NEW_TOKENS"] == "77"  # the environment's value
    # The file's values are left to the file: one put in the environment would beat it.
    assert "R3_LEARNING_RATE" not in env and "R3_FIXED_EVAL_SETS" not in env
    assert user_value("R3_FIXED_EVAL_SETS", env, env_file) == "arithmetic:2:english"
    assert set(applied) == set(DEMO_TRAINER_ENV) - {"R3_SAMPLE_MAX_NEW_TOKENS", "R3_LEARNING_RATE"}
    assert env["R3_MAX_LENGTH"] == DEMO_TRAINER_ENV["R3_MAX_LENGTH"]

    bare: dict[str, str] = {}
    apply_demo_recipe(bare, settings, env_file=tmp_path / "absent.env")
    assert bare == DEMO_TRAINER_ENV | {"R3_FIXED_EVAL_SETS": "syllogism:1:english"}


def test_an_old_variable_name_counts_as_the_user_s(tmp_path: Path) -> None:
    # R3_FIXED_EVAL_MAX_NEW_TOKENS is eval_max_tokens' old name: set, it is the user's word.
    assert "R3_EVAL_MAX_TOKENS" in user_variables(
        {"R3_FIXED_EVAL_MAX_NEW_TOKENS": "300"}, env_file=None
    )
