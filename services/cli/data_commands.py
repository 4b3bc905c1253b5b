"""`regime3 data …`: generate chat JSONL training data from the codec's built-in domains."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import TextIO, cast

import click

from codec.codebook import Codebook
from codec.domains import DOMAINS, default_codebook, generate
from codec.errors import CodecError
from codec.modes import MixedSchedule, Mode, schedule_for
from codec.problem import RenderSettings, Split

PROGRESS_FROM = 1000  # counts at least this large report progress on stderr


def _parse_mix(text: str | None) -> MixedSchedule | None:
    if not text:
        return None
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ("english", "canonical", "encoded") or not value:
            raise click.BadParameter(
                f"{part!r}: write english=F,canonical=F,encoded=F (e.g. english=0.2,encoded=0.8)",
                param_hint="--mix",
            )
        try:
            weights[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number", param_hint="--mix") from None
    try:
        return MixedSchedule(
            **{k: weights.get(k, 0.0) for k in ("english", "canonical", "encoded")}
        )
    except CodecError as err:
        raise click.BadParameter(str(err), param_hint="--mix") from None


@click.group("data")
def data_group() -> None:
    """Generate training data from the built-in domains."""


@data_group.command("domains")
def domains_command() -> None:
    """List the built-in domains and their difficulty levels."""
    for name, domain in DOMAINS.items():
        levels = ",".join(map(str, domain.levels))
        click.echo(f"{name:12} levels {levels:10} {domain.description}")


@data_group.command("generate")
@click.option("--domain", required=True, type=click.Choice(sorted(DOMAINS)), help="Domain.")
@click.option("--count", required=True, type=click.IntRange(min=1), help="Examples to write.")
@click.option("--difficulty", default=1, show_default=True, type=int, help="Difficulty level.")
@click.option(
    "--mode",
    default=Mode.ENGLISH.value,
    show_default=True,
    type=click.Choice([m.value for m in Mode]),
    help="How the reasoning is written.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed.")
@click.option(
    "--split",
    default="train",
    show_default=True,
    type=click.Choice(["train", "heldout"]),
    help="Training or held-out problems (never overlapping).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Output JSONL file ('-' for stdout).",
)
@click.option(
    "--codebook",
    "codebook_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Codebook JSON for encoded reasoning (default: the shipped codebook).",
)
@click.option("--mix", help="Mixed-mode fractions, e.g. english=0.2,canonical=0.3,encoded=0.5.")
@click.option("--think", default=4, show_default=True, type=click.IntRange(min=1), help="🤔 count.")
@click.option("--no-meta", is_flag=True, help="Leave out the meta object.")
def generate_command(
    domain: str,
    count: int,
    difficulty: int,
    mode: str,
    seed: int,
    split: str,
    out: str,
    codebook_path: str | None,
    mix: str | None,
    think: int,
    no_meta: bool,
) -> None:
    """Write COUNT chat JSONL examples of one domain and difficulty."""
    levels = DOMAINS[domain].levels
    if difficulty not in levels:
        raise click.BadParameter(
            f"{difficulty} is not a level of {domain}; use one of {', '.join(map(str, levels))}",
            param_hint="--difficulty",
        )
    chosen = Mode(mode)
    mixed = _parse_mix(mix)
    if mixed is not None and chosen is not Mode.MIXED:
        raise click.BadParameter("--mix only applies with --mode mixed", param_hint="--mix")
    codebook: Codebook | None = None
    if chosen is not Mode.ENGLISH and chosen is not Mode.CANONICAL:
        try:
            codebook = Codebook.load(codebook_path) if codebook_path else default_codebook()
        except CodecError as err:
            raise click.BadParameter(str(err), param_hint="--codebook") from None
    schedule = schedule_for(chosen, total=count, mixed=mixed)
    settings = RenderSettings(think_repeat=think, include_meta=not no_meta)
    rng = random.Random(f"render:{domain}:{difficulty}:{seed}")
    problems = generate(
        domain, count=count, difficulty=difficulty, seed=seed, split=cast(Split, split)
    )
    if out != "-" and not Path(out).parent.exists():
        raise click.BadParameter(
            f"folder {Path(out).parent} does not exist; create it first", param_hint="--out"
        )
    # Written under a temporary name and renamed when complete: a run that fails midway
    # (a level running out of problems, Ctrl-C) never leaves a short file that looks whole.
    partial = Path(f"{out}.part")
    stream: TextIO = sys.stdout if out == "-" else open(partial, "w", encoding="utf-8")  # noqa: SIM115
    step = max(count // 10, PROGRESS_FROM)
    complete = False
    try:
        for index, problem in enumerate(problems):
            line = problem.render(schedule.mode_for(index, rng), codebook, rng, settings)
            stream.write(json.dumps(line, ensure_ascii=False) + "\n")
            done = index + 1
            if count >= PROGRESS_FROM and (done % step == 0 or done == count):
                click.echo(f"data generate: {done}/{count} examples", err=True)
        complete = True
    except CodecError as err:
        raise click.ClickException(f"{err}. Nothing was written to {out}.") from None
    finally:
        if stream is not sys.stdout:
            stream.close()
            if complete:
                os.replace(partial, out)
            else:
                partial.unlink(missing_ok=True)
