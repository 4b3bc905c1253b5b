"""What a study trains: its options, resolved once and stored in `<out>/study.json`.

A study is one run per (mode, seed): the same problems in the same order for every mode of a
seed (the seed picks the problem draw and the trainer's seed), the same starting model, the
same recipe; each run has its own directory under `<out>/runs/`. Re-running the command with
the same --out reads the stored plan back, so a resumed study is the same study.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from codec.domains import get_domain
from codec.errors import DomainError
from services.study.errors import StudyError
from services.validation.sets import SET_MODES

DEFAULT_MODES = ("english", "canonical", "encoded", "assorted")
PLAN_FILE = "study.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class RunSpec:
    """One run of the study: a mode and a seed."""

    mode: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mode}-s{self.seed}"


@dataclass(frozen=True)
class StudyPlan:
    study_id: str
    domain: str
    difficulty: int
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int  # optimizer steps per run
    eval_every: int  # steps between evaluations on the held-out set (and checkpoints)
    eval_size: int  # held-out problems per evaluation
    target: float  # the EM whose first step the report gives
    # The starting model's directory (--model, else R3_MODEL, resolved when the study began),
    # or EMBEDDED_MODEL: the embedded one, built into <out>/models. None only in plans stored
    # before the model was recorded.
    model: str | None
    started: float  # unix time of the first invocation
    recipe: dict[str, str] = field(default_factory=dict)  # R3_* given to every run
    data: str | None = None  # the user's canonical JSONL (domain: its name, difficulty 0)
    codebook: str | None = None  # codebook JSON of the coded modes; None: the built-in one

    @property
    def runs(self) -> list[RunSpec]:
        return [RunSpec(mode, seed) for seed in self.seeds for mode in self.modes]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyPlan:
        data = dict(data)
        data["modes"] = tuple(data["modes"])
        data["seeds"] = tuple(int(s) for s in data["seeds"])
        return cls(**data)


def parse_modes(text: str) -> tuple[str, ...]:
    """`english,canonical,…` into modes; an unknown one is named with the choices."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    allowed = [m.value for m in SET_MODES]
    for mode in modes:
        if mode not in allowed:
            raise StudyError(f"--modes: {mode!r} is not a study mode; choose from {allowed}")
    if not modes:
        raise StudyError(f"--modes is empty; give one or more of {allowed}")
    if len(set(modes)) != len(modes):
        raise StudyError(f"--modes {text!r} names a mode twice")
    return modes


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise StudyError(
            f"--seeds {text!r}: give whole numbers separated by commas, e.g. 1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds {text!r}: give one or more distinct seeds, e.g. 1,2")
    return seeds


def new_plan(
    *,
    domain: str,
    difficulty: int,
    modes: tuple[str, ...],
    seeds: tuple[int, ...],
    steps: int,
    eval_every: int,
    eval_size: int,
    target: float,
    model: str | None,
    recipe: dict[str, str],
    data: str | None = None,
    codebook: str | None = None,
) -> StudyPlan:
    try:
        spec = get_domain(domain) if data is None else None
    except DomainError as exc:
        raise StudyError(f"--domain: {exc}") from None
    if spec is not None and difficulty not in spec.levels:
        raise StudyError(
            f"--difficulty {difficulty} is not a level of {domain}; use one of "
            f"{', '.join(map(str, spec.levels))}"
        )
    if steps < 1 or eval_every < 1 or eval_size < 1:
        raise StudyError(
            f"--steps {steps}, --eval-every {eval_every}, --eval-size {eval_size}: each must "
            "be at least 1"
        )
    if not 0.0 < target <= 1.0:
        raise StudyError(f"--target {target} must be an EM in (0, 1]")
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    return StudyPlan(
        study_id=f"modes-{domain}-d{difficulty}-{stamp}",
        domain=domain,
        difficulty=difficulty,
        modes=modes,
        seeds=seeds,
        steps=steps,
        eval_every=eval_every,
        eval_size=eval_size,
        target=target,
        model=model,
        started=started,
        recipe=recipe,
        data=data,
        codebook=codebook,
    )


EMBEDDED_MODEL = "embedded"


def load_or_store(out: Path, plan: StudyPlan) -> tuple[StudyPlan, bool]:
    """The plan stored in `out` when there is one (a resumed study), else `plan`, stored.

    A stored plan that trains something else (other modes, seeds, steps, domain, model) is
    refused: its runs' checkpoints would be resumed as if they were this study's.
    """
    path = out / PLAN_FILE
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        return plan, False
    try:
        stored = StudyPlan.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise StudyError(f"{path}: not a study plan ({exc}); use another --out") from None
    unrecorded = stored.model is None  # stored before the starting model was: this one
    if unrecorded:
        stored = replace(stored, model=plan.model)
    mine = plan.to_json()
    theirs = stored.to_json()
    differ = [
        k for k in mine if k not in ("study_id", "started", "recipe") and mine[k] != theirs.get(k)
    ]
    if differ:
        diffs = "; ".join(f"{k}: stored {theirs.get(k)!r}, asked {mine[k]!r}" for k in differ)
        raise StudyError(
            f"{out} holds another study ({diffs}); re-run with the stored options to resume "
            "it, or give another --out"
        )
    if unrecorded:
        path.write_text(json.dumps(stored.to_json(), indent=2) + "\n")
    return stored, True


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold `<out>/.lock` while a study runs there: two invocations on one folder would train
    the same runs twice into the same checkpoints. Released when the process ends, however."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StudyError(
                f"{out} is in use by a study running now ({holder}); wait for it, stop it "
                "(Ctrl-C: its runs resume later), or give another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
