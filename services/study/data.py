"""A study's data: each seed's training problems rendered once per mode, and the held-out sets.

Every mode of a seed trains on the same train-split problems in the same order (drawn with the
seed), rendered through the codec; every run is scored on the same held-out problems (the
fixed validation sets' draw, `services.validation.sets`), rendered in the run's own mode. The
two splits are disjoint by construction (a hash of the canonical problem).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from codec.codebook import Codebook
from codec.domains import default_codebook, generate
from codec.errors import DomainError
from codec.modes import Mode
from codec.problem import Problem, RenderSettings
from services.study.plan import RunSpec, StudyPlan
from services.study.userdata import UserData
from services.validation.sets import CODED_SET_MODES, VALIDATION_SEED, ensure_set, set_path

# The fewest tokens one example takes in any mode (prompt and chat template included): the
# file holds steps × tokens-per-step / this many examples, so no run reaches its end; a run
# that would (a small level) goes round the file again (R3_EPOCHS is set high for that).
MIN_EXAMPLE_TOKENS = 48


def examples_needed(steps: int, tokens_per_step: int) -> int:
    return steps * tokens_per_step // MIN_EXAMPLE_TOKENS + 64


def train_path(out: Path, run: RunSpec) -> Path:
    return out / "data" / f"{run.name}.jsonl"


def _problems(plan: StudyPlan, seed: int, count: int) -> list[Problem]:
    problems: list[Problem] = []
    try:
        for problem in generate(
            plan.domain, count=count, difficulty=plan.difficulty, seed=seed, split="train"
        ):
            problems.append(problem)
    except DomainError:
        # A small level has fewer distinct problems than asked: the runs go round them again.
        if not problems:
            raise
    return problems


def _write(path: Path, lines: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    with partial.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def _user_problems(user: UserData, seed: int) -> list[Problem]:
    problems = list(user.train)
    random.Random(f"study:{user.name}:{seed}").shuffle(problems)  # the seed picks the order
    return problems


def write_training_files(
    plan: StudyPlan,
    out: Path,
    tokens_per_step: int,
    codebook: Codebook | None = None,
    user: UserData | None = None,
) -> dict[str, int]:
    """Each run's training file (kept when it exists: a resumed run reads the file its
    checkpoint's cursor points into); {run name: examples}."""
    codebook = codebook or default_codebook()
    count = examples_needed(plan.steps, tokens_per_step)
    written: dict[str, int] = {}
    for seed in plan.seeds:
        runs = [RunSpec(mode, seed) for mode in plan.modes]
        missing = [run for run in runs if not train_path(out, run).exists()]
        if not missing:
            problems = []
        elif user is not None:
            problems = _user_problems(user, seed)
        else:
            problems = _problems(plan, seed, count)
        for run in runs:
            path = train_path(out, run)
            if run in missing:
                mode = Mode(run.mode)
                # One render stream per seed: the same 🛑 counts in every mode where the mode
                # draws nothing else.
                rng = random.Random(f"study:{plan.domain}:{plan.difficulty}:{seed}")
                coded = codebook if mode in CODED_SET_MODES else None
                lines = [p.render(mode, coded, rng, RenderSettings()) for p in problems]
                _write(path, lines)
            with path.open(encoding="utf-8") as handle:
                written[run.name] = sum(1 for text in handle if text.strip())
    return written


def write_validation_sets(
    plan: StudyPlan, out: Path, user: UserData | None = None, codebook: Codebook | None = None
) -> dict[str, Path]:
    """The held-out set of every mode (the same problems), drawn once into `<out>/validation`."""
    root = validation_root(out)
    for mode in plan.modes:
        path = set_path(root, plan.domain, plan.difficulty, mode)
        if user is not None and not path.exists():
            # The user's held-out problems, as the trainer's fixed sets are stored.
            rng = random.Random(f"validation:{user.name}:0:{VALIDATION_SEED}")
            coded = (codebook or default_codebook()) if Mode(mode) in CODED_SET_MODES else None
            _write(path, [p.render(Mode(mode), coded, rng) for p in user.heldout])
        ensure_set(root, plan.domain, plan.difficulty, mode, plan.eval_size, codebook)
    return {m: set_path(root, plan.domain, plan.difficulty, m) for m in plan.modes}


def validation_root(out: Path) -> Path:
    return out / "validation"
