"""`regime3 study modes`: which training mode learns best, measured on this machine.

One short run per mode and seed from the same starting model, through the real trainer;
see docs/study.md for what it answers and how to read its report.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from bus.connections import connect
from bus.errors import RedisUnavailable
from bus.settings import get_bus_settings
from codec.codebook import Codebook
from codec.errors import CodecError
from services.feeder.demo import user_value
from services.study.data import write_training_files, write_validation_sets
from services.study.errors import StudyError
from services.study.plan import (
    DEFAULT_MODES,
    EMBEDDED_MODEL,
    StudyPlan,
    load_or_store,
    locked,
    new_plan,
    parse_modes,
    parse_seeds,
)
from services.study.plots import require_matplotlib
from services.study.runner import ENV_FILE, ROOT, Study, recipe
from services.study.userdata import read_data


def _start_model(model: str | None) -> str:
    """The study's starting model, fixed in its plan: --model, else R3_MODEL, else the
    embedded model (EMBEDDED_MODEL: built once into `<out>/models`, `_model_dir`)."""
    from services.model.config import get_model_settings

    if model:
        return str(Path(model).expanduser().resolve())
    configured = get_model_settings().model
    if configured is not None:
        return str(Path(configured).expanduser().resolve())
    return EMBEDDED_MODEL


def _model_dir(start: str | None, out: Path) -> str:
    """The directory every run loads: the plan's model, the embedded one built once into
    `<out>/models` so every run starts from the same weights (and none spends its time
    building it)."""
    from services.model.embedded import ensure_embedded_model

    if start and start != EMBEDDED_MODEL:
        return start
    return str(ensure_embedded_model(out / "models").resolve())


@click.group("study")
def study_group() -> None:
    """Studies: short controlled training runs and their report."""


def _kills(values: tuple[str, ...]) -> dict[str, int]:
    kills = {}
    for value in values:
        name, _, step = value.rpartition(":")
        if not name or not step.isdigit():
            raise click.BadParameter(f"{value!r} is not RUN:STEP", param_hint="--kill-run")
        kills[name] = int(step)
    return kills


def _command(plan: StudyPlan, parallel: int, out: Path) -> list[str]:
    """The command that runs (and resumes) this study, every option spelled out."""
    command = ["regime3", "study", "modes", "--domain", plan.domain]
    command += ["--difficulty", str(plan.difficulty), "--modes", ",".join(plan.modes)]
    command += ["--seeds", ",".join(map(str, plan.seeds)), "--steps", str(plan.steps)]
    command += ["--eval-every", str(plan.eval_every), "--eval-size", str(plan.eval_size)]
    command += ["--target", f"{plan.target:g}"]
    if plan.model and plan.model != EMBEDDED_MODEL:
        command += ["--model", plan.model]
    if plan.data:
        command += ["--data", plan.data]
    if plan.codebook:
        command += ["--codebook", plan.codebook]
    return [*command, "--parallel", str(parallel), "--out", str(out)]


@study_group.command("modes")
@click.option("--domain", default="syllogism", show_default=True, help="Built-in domain.")
@click.option("--difficulty", default=1, show_default=True, type=int, help="Its level.")
@click.option(
    "--modes",
    "modes_text",
    default=",".join(DEFAULT_MODES),
    show_default=True,
    help="Training modes to compare, comma-separated.",
)
@click.option("--seeds", "seeds_text", default="1,2", show_default=True, help="Seeds, e.g. 1,2.")
@click.option("--steps", default=400, show_default=True, type=int, help="Optimizer steps a run.")
@click.option(
    "--eval-every",
    default=20,
    show_default=True,
    type=int,
    help="Steps between evaluations (and checkpoints).",
)
@click.option(
    "--eval-size", default=64, show_default=True, type=int, help="Held-out problems scored."
)
@click.option(
    "--target", default=0.9, show_default=True, type=float, help="EM whose first step is given."
)
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Starting model directory (default: R3_MODEL, else the embedded model).",
)
@click.option(
    "--parallel",
    type=int,
    default=None,
    help="Runs at once, one torch thread each (default: the CPU cores).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: study-<domain>-d<difficulty>); re-run with the same one "
    "to resume.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Your own JSONL of canonical reasoning lines instead of a built-in domain "
    "(docs/study.md says the format).",
)
@click.option(
    "--codebook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Codebook JSON of the encoded and assorted runs (`regime3 codec build`; default: "
    "R3_CODEBOOK, else the built-in one).",
)
@click.option("--kill-run", "kill_run", multiple=True, hidden=True, help="RUN:STEP (tests).")
def modes_command(
    domain: str,
    difficulty: int,
    modes_text: str,
    seeds_text: str,
    steps: int,
    eval_every: int,
    eval_size: int,
    target: float,
    model: str | None,
    parallel: int | None,
    out: Path | None,
    data: Path | None,
    codebook: Path | None,
    kill_run: tuple[str, ...],
) -> None:
    """Train one short run per mode and seed from the same model and compare them.

    Every mode of a seed trains on the same problems in the same order, and every run is
    scored on the same held-out problems in its own mode (EM, answer-token CE, thinking tokens
    per answer, parse failures). Writes report.md, report.json and PNG plots to --out and
    publishes study.progress / study.report on the bus. Finished runs are kept; a partial one
    resumes from its last checkpoint when the same command runs again.
    """
    try:
        require_matplotlib()  # checked now, not after the runs
        modes = parse_modes(modes_text)
        user = None
        if data is not None:
            user = read_data(data, modes=modes, eval_size=eval_size)
            domain, difficulty = user.name, 0
        out = out or Path(f"study-{domain}-d{difficulty}")
        # One codebook for the data, the held-out sets and the trainer (R3_CODEBOOK of every
        # run): data stamped with one and a run taking another would fail its first file.
        # R3_CODEBOOK as the runs would read it: the environment, else the runs' `.env`
        # (a relative path there is the runs' working directory's, ROOT).
        configured = user_value("R3_CODEBOOK", os.environ, ENV_FILE)
        chosen = codebook or (
            (ROOT / Path(configured).expanduser() if configured else None)
            if not os.environ.get("R3_CODEBOOK")
            else Path(configured)
        )
        codebook_path = None if chosen is None else str(chosen.expanduser().resolve())
        coded = None if codebook_path is None else Codebook.load(codebook_path)
        run_recipe = recipe(eval_every, os.environ, ENV_FILE)
        run_recipe.pop("R3_CODEBOOK", None)
        if codebook_path is not None:
            run_recipe["R3_CODEBOOK"] = codebook_path
        plan = new_plan(
            domain=domain,
            difficulty=difficulty,
            modes=modes,
            seeds=parse_seeds(seeds_text),
            steps=steps,
            eval_every=eval_every,
            eval_size=eval_size,
            target=target,
            model=_start_model(model),
            recipe=run_recipe,
            data=None if data is None else str(data.resolve()),
            codebook=codebook_path,
        )
        with locked(out):  # one invocation at a time on a folder
            plan, resumed = load_or_store(out, plan)
            main_url = get_bus_settings().redis_url
            main = connect(main_url)
            click.echo(
                f"study {plan.study_id} in {out} ({'resumed' if resumed else 'new'}): "
                f"{', '.join(plan.modes)} × seeds {', '.join(map(str, plan.seeds))} × "
                f"{plan.steps} steps"
            )
            click.echo("drawing the problems and rendering each mode …")
            write_validation_sets(plan, out, user, codebook=coded)
            write_training_files(
                plan,
                out,
                int(plan.recipe.get("R3_TOKENS_PER_STEP", "1024")),
                codebook=coded,
                user=user,
            )
            model_dir = _model_dir(plan.model, out)
            study = Study(
                model_dir=model_dir,
                plan=plan,
                out=out,
                main=main,
                main_url=main_url,
                parallel=parallel or os.cpu_count() or 1,
                command=_command(plan, parallel or os.cpu_count() or 1, out),
                echo=lambda line: click.echo(line),
                kill=_kills(kill_run),
            )
            report = study.run()
    except (StudyError, CodecError, RedisUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"report: {out / 'report.md'} (and report.json, *.png)")
    if report["state"] != "done":
        raise click.ClickException(
            "some runs did not finish (above); re-run the same command to resume them"
        )
