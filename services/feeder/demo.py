"""The demo's training data: built-in domain problems, every fixed validation problem excluded.

The codec already keeps train and held-out problems apart (a hash of the canonical problem),
and the validation sets are drawn from the held-out side; the generator here also drops any
problem whose id (the hash of its canonical statement) is in a stored validation set, so no
held-out problem can reach training even if a set were drawn some other way.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import redis
from dotenv import dotenv_values

from bus import keys, queues
from codec.codebook import Codebook
from codec.domains import default_codebook, generate
from codec.modes import Mode, TransitionalSchedule
from codec.problem import RenderSettings
from services.dataset_store import DatasetStore
from services.feeder.config import FeederSettings
from services.feeder.feeder import SEEDED_EXAMPLES_FIELD
from services.validation.sets import ensure_set, parse_sets, stored_ids
from settings.base import PREFIX, RENAMED

# The trainer settings that make the embedded tiny model learn the demo on a CPU (the recipe
# measured for the 10-minute acceptance: docs/operations.md, bench/README.md). `regime3 up`
# and bench/demo_learning.py set each one the user did not (apply_demo_recipe), and only while
# no other model is configured.
#
# No answer ceiling (R3_EVAL_MAX_TOKENS) here: the fixed eval's budget follows its set (the
# longest golden turn plus a margin, services.validation.scorer), and a ceiling of 96 cut
# every English syllogism answer (~130 tokens), which scored EM 0.00 for the whole run.
DEMO_TRAINER_ENV: dict[str, str] = {
    "R3_MAX_LENGTH": "256",
    "R3_MICRO_BATCH_TOKENS": "1024",
    "R3_TOKENS_PER_STEP": "1024",
    "R3_LEARNING_RATE": "3e-3",
    "R3_WARMUP_STEPS": "20",
    "R3_LR_SCHEDULE": "constant",
    "R3_WEIGHT_DECAY": "0.0",
    "R3_ACTIVATION_CHECKPOINTING": "false",
    "R3_EVAL_STEPS": "40",
    "R3_SAVE_STEPS": "100",
    "R3_LAYER_MONITOR_STEPS": "50",
    # The longest reasoning of any demo mode (English syllogism, ~130 tokens) and a margin:
    # a sample cut before its 🛑 would show "no answer" for a model that had one.
    "R3_SAMPLE_MAX_NEW_TOKENS": "192",
    # One thread: the node and its generate jobs use the other core, and on a busy CPU
    # two spinning OpenMP threads made each step ~8x slower than one.
    "R3_TORCH_THREADS": "1",
}


def demo_eval_sets(settings: FeederSettings) -> str:
    """R3_FIXED_EVAL_SETS for the demo: its domain and level in the mode it trains.

    A transitional run has no one mode (a set is rendered in one): it is scored on the English
    set, the mode it starts in, whose budget covers English reasoning, so the early English
    answers are not cut; EM compares answers, and answer CE compares across modes.
    """
    mode = "english" if settings.demo_mode == "transitional" else settings.demo_mode
    return f"{settings.demo_domain}:{settings.demo_difficulty}:{mode}"


def user_variables(env: Mapping[str, str], env_file: Path | None = Path(".env")) -> set[str]:
    """The R3_* variables the user set: in `env`, or in the `.env` file every settings class
    also reads (a recipe value put in the environment would beat the file's). An old, renamed
    variable counts as its new name (the recipe must not beat it either)."""
    names = {k for k in env if k.startswith(PREFIX)}
    if env_file is not None and env_file.is_file():
        names |= {k for k in dotenv_values(env_file) if k.startswith(PREFIX)}
    names |= {PREFIX + r.new.upper() for old, r in RENAMED.items() if old in names}
    return names


def user_value(name: str, env: Mapping[str, str], env_file: Path | None = Path(".env")) -> str:
    """`name`'s value as the services will read it: the environment, else `.env`, else ""."""
    if env.get(name):
        return env[name]
    if env_file is not None and env_file.is_file():
        return dotenv_values(env_file).get(name) or ""
    return ""


def apply_demo_recipe(
    env: dict[str, str], settings: FeederSettings, *, env_file: Path | None = Path(".env")
) -> dict[str, str]:
    """Put the demo recipe and its eval sets into `env` wherever the user set nothing (in
    `env` or `env_file`): the user's variables win. Returns what was set."""
    mine = user_variables(env, env_file)
    wanted = DEMO_TRAINER_ENV | {"R3_FIXED_EVAL_SETS": demo_eval_sets(settings)}
    applied = {name: value for name, value in wanted.items() if name not in mine}
    env.update(applied)
    return applied


def problem_lines(
    domain: str,
    difficulty: int,
    *,
    count: int,
    seed: int,
    exclude: set[str],
    mode: Mode = Mode.CANONICAL,
    codebook: Codebook | None = None,
    start_index: int = 0,
    curriculum_examples: int | None = None,
) -> Iterator[dict[str, Any]]:
    """`count` chat lines of train-split problems, none of whose id is in `exclude`.

    `mode` TRANSITIONAL draws each example's mode from the curriculum at position
    `start_index + i` of `curriculum_examples`.
    """
    rng = random.Random(f"demo:{domain}:{difficulty}:{seed}")
    schedule = (
        TransitionalSchedule(total=curriculum_examples or max(1, count))
        if mode is Mode.TRANSITIONAL
        else None
    )
    if codebook is None and mode in (Mode.ENCODED, Mode.TRANSITIONAL):
        codebook = default_codebook()
    made = 0
    # Asking for more than `count` leaves room for the excluded ones; generation is lazy.
    for problem in generate(
        domain, count=count + len(exclude), difficulty=difficulty, seed=seed, split="train"
    ):
        if problem.id in exclude:
            continue
        chosen = schedule.mode_for(start_index + made, rng) if schedule else mode
        yield problem.render(chosen, codebook, rng, RenderSettings())
        made += 1
        if made == count:
            return


def write_shard(path: Path, lines: Iterator[dict[str, Any]]) -> int:
    """Write the lines to `path` (temp file + rename); returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    written = 0
    with partial.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
    os.replace(partial, path)
    return written


def seed_queue(
    connection: redis.Redis,
    settings: FeederSettings,
    *,
    validation_sets: str,
    validation_size: int,
) -> list[str]:
    """Queue the demo's first data when every training queue is empty; returns the job ids.

    The validation sets are drawn first (they are what the data must exclude), then
    R3_DEMO_SEED_EXAMPLES examples in R3_DEMO_SHARD_EXAMPLES-sized files go through the
    dataset store onto train-normal, as `regime3 enqueue` would queue them.
    """
    if settings.demo_seed_examples == 0 or any(
        queues.depths(connection)[q] for q in keys.TRAIN_QUEUES
    ):
        return []
    for spec in parse_sets(validation_sets):
        ensure_set(
            settings.validation_path, spec.domain, spec.difficulty, spec.mode, validation_size
        )
    exclude = stored_ids(settings.validation_path)
    store = DatasetStore(settings.layout.datasets)
    staging = settings.layout.demo
    mode = Mode(settings.demo_mode)
    job_ids: list[str] = []
    made = 0
    shard = 0
    while made < settings.demo_seed_examples:
        count = min(settings.demo_shard_examples, settings.demo_seed_examples - made)
        stem = f"demo-{settings.demo_domain}-d{settings.demo_difficulty}-{mode.value}"
        path = staging / f"{stem}-{shard:03d}.jsonl"
        written = write_shard(
            path,
            problem_lines(
                settings.demo_domain,
                settings.demo_difficulty,
                count=count,
                seed=shard,
                exclude=exclude,
                mode=mode,
                start_index=made,
                curriculum_examples=settings.curriculum_total,
            ),
        )
        stored = store.add(path, move=True)
        job = queues.enqueue(
            connection,
            queues.TRAIN_FILE,
            kind="train",
            priority="normal",
            kwargs={
                "path": str(stored.path.resolve()),
                "name": stored.name,
                "sha256": stored.sha256,
            },
            description=f"train {stored.name} ({stored.lines} examples, the demo's seed data)",
        )
        job_ids.append(job.id)
        made += written
        shard += 1
    # The feeder's generated data continues the curriculum after the seeded examples.
    connection.hset(keys.FEEDER_STATUS, SEEDED_EXAMPLES_FIELD, str(made))
    return job_ids
