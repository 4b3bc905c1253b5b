"""A study's report: the table (per mode, the mean over seeds and each seed), the curves, the
machine, versions and command it ran with; as JSON (`report.json`) and Markdown (`report.md`).

Which figure is which:
- EM: exact match of the final answer on the held-out set, judged canonically (codes decoded
  with the run's codebook), at the run's last step.
- first step EM ≥ target: the first evaluation step that reached it ("never" when none did).
- thinking tokens: the model's own reasoning per answer (tokens before its first 🛑, after
  the opening 🤔), at the last step: what a mode costs at inference.
- answer CE: NLL per token of the golden answer only, which is the same text in every mode,
  so it compares modes; the trainer's CE (per token of each mode's own reference) cannot.
- parse failures: outputs whose answer could not be parsed (or had no 🛑), at the last step.
- loss tokens to target: tokens the loss was computed on until the first step at target:
  what a mode costs to learn (a step is a fixed token budget, so verbose modes see fewer
  problems per step).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from services.study.plan import StudyPlan


@dataclass
class RunResult:
    """What one run has produced so far (read from its directory)."""

    mode: str
    seed: int
    state: str  # pending | running | done | failed
    steps_done: int
    curve: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)  # the steps it resumed from


def _last(curve: list[dict[str, Any]], key: str) -> Any:
    return curve[-1][key] if curve else None


def run_row(run: RunResult, target: float) -> dict[str, Any]:
    reached = next((p for p in run.curve if p["em"] >= target), None)
    return {
        "mode": run.mode,
        "seed": run.seed,
        "state": run.state,
        "step": _last(run.curve, "step"),
        "em": _last(run.curve, "em"),
        "first_step_at_target": None if reached is None else reached["step"],
        "thinking_tokens": _last(run.curve, "thinking_tokens"),
        "answer_ce": _last(run.curve, "answer_ce"),
        "parse_failures": _last(run.curve, "parse_failures"),
        "eval_size": _last(run.curve, "total"),
        "loss_tokens_to_target": None if reached is None else reached["loss_tokens"],
        "loss_tokens": _last(run.curve, "loss_tokens"),
    }


def _mean(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def mode_row(mode: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds; a figure some seed lacks (never reached the target) is None."""
    row: dict[str, Any] = {"mode": mode, "seed": None}
    row["state"] = "done" if all(r["state"] == "done" for r in rows) else "incomplete"
    for key in (
        "step",
        "em",
        "first_step_at_target",
        "thinking_tokens",
        "answer_ce",
        "parse_failures",
        "eval_size",
        "loss_tokens_to_target",
        "loss_tokens",
    ):
        row[key] = _mean([r[key] for r in rows])
    row["seeds_at_target"] = sum(r["first_step_at_target"] is not None for r in rows)
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def table(plan: StudyPlan, runs: list[RunResult]) -> list[dict[str, Any]]:
    """Rows: per mode its mean over seeds (seed None), then each seed; with the ratios of
    thinking tokens to canonical's and to English's and the EM difference to English."""
    by_mode = {m: [run_row(r, plan.target) for r in runs if r.mode == m] for m in plan.modes}
    means = {m: mode_row(m, rows) for m, rows in by_mode.items() if rows}
    out: list[dict[str, Any]] = []
    for mode, rows in by_mode.items():
        for row in [means[mode], *rows] if rows else []:
            seed = row["seed"]

            def ref(name: str, seed: int | None = seed) -> dict[str, Any] | None:
                if name not in by_mode:
                    return None
                if seed is None:
                    return means.get(name)
                return next((r for r in by_mode[name] if r["seed"] == seed), None)

            canonical, english = ref("canonical"), ref("english")
            row["thinking_vs_canonical"] = _ratio(
                row["thinking_tokens"], None if canonical is None else canonical["thinking_tokens"]
            )
            row["thinking_vs_english"] = _ratio(
                row["thinking_tokens"], None if english is None else english["thinking_tokens"]
            )
            row["em_minus_english"] = (
                None
                if english is None or row["em"] is None or english["em"] is None
                else row["em"] - english["em"]
            )
            out.append(row)
    return out


def environment(command: list[str]) -> dict[str, Any]:
    """The machine, versions and command a study ran with."""
    cpu = platform.processor() or platform.machine()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("torch", "transformers", "regime3"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}",
        },
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit or None,
        "command": " ".join(command),
        "executable": sys.executable,
    }


def report(
    plan: StudyPlan,
    runs: list[RunResult],
    *,
    env: dict[str, Any],
    wall_seconds: float,
    out: Path,
    start_model: str | None = None,
) -> dict[str, Any]:
    return {
        "study_id": plan.study_id,
        "start_model": start_model or plan.model,
        "state": "done" if all(r.state == "done" for r in runs) else "incomplete",
        "plan": plan.to_json(),
        "environment": env,
        "wall_seconds": round(wall_seconds, 1),
        "table": table(plan, runs),
        "runs": [
            {
                "mode": r.mode,
                "seed": r.seed,
                "state": r.state,
                "steps_done": r.steps_done,
                "resumed_from": r.resumes,
                "curve": r.curve,
            }
            for r in runs
        ],
        "out": str(out),
        "plots": [str(out / name) for name in PLOTS],
    }


PLOTS = ("em_vs_steps.png", "em_vs_loss_tokens.png", "thinking_tokens.png")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    plan = StudyPlan.from_json(data["plan"])
    env = data["environment"]
    steps = plan.steps
    lines = [
        f"# Study {data['study_id']}: training modes on {plan.domain} d{plan.difficulty}",
        "",
        f"{len(plan.modes)} modes × {len(plan.seeds)} seeds × {steps} steps from the same "
        f"model (`{data.get('start_model') or plan.model or 'the embedded model'}`); each run "
        "scored every "
        f"{plan.eval_every} steps on the same {plan.eval_size} held-out problems, rendered in "
        f"its own mode. State: **{data['state']}**, wall time {data['wall_seconds'] / 60:.1f} "
        "min.",
        "",
        f"| mode | seed | EM at last step | first step EM ≥ {plan.target:g} | thinking tokens "
        "per answer | answer CE | parse failures | loss tokens to target | thinking ÷ "
        "canonical | thinking ÷ English | EM − English |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["table"]:
        seed = "mean" if row["seed"] is None else str(row["seed"])
        first = row["first_step_at_target"]
        if first is None:
            reached = row.get("seeds_at_target")  # a mean row's: seeds that reached it
            first_text = f"{reached} of {len(plan.seeds)} seeds" if reached else "never"
        else:
            first_text = f"{first:.0f}"
        em = _fmt(row["em"])
        if row["step"] is not None and row["step"] != steps:
            em += f" (step {row['step']:.0f})"
        mode = f"**{row['mode']}**" if row["seed"] is None else row["mode"]
        lines.append(
            f"| {mode} | {seed} | {em} | {first_text} | {_fmt(row['thinking_tokens'], 1)} | "
            f"{_fmt(row['answer_ce'], 3)} | {_fmt(row['parse_failures'], 1)} | "
            f"{_fmt(row['loss_tokens_to_target'], 0)} | {_fmt(row['thinking_vs_canonical'])} | "
            f"{_fmt(row['thinking_vs_english'])} | {_fmt(row['em_minus_english'])} |"
        )
    lines += [
        "",
        "EM: exact match of the final answer, judged canonically. Thinking tokens: the "
        "model's own reasoning before its first 🛑 (after the opening 🤔). Answer CE: NLL per "
        "token of the golden answer only, the same text in every mode (the trainer's CE is "
        "per token of each mode's own reference and cannot compare modes). Loss tokens to "
        "target: tokens trained on until the first step at the target EM.",
        "",
        "![EM vs steps](em_vs_steps.png) ![EM vs loss tokens](em_vs_loss_tokens.png) "
        "![thinking tokens](thinking_tokens.png)",
        "",
        "## How it ran",
        "",
        f"- command: `{env['command']}`",
        f"- machine: {env['machine']['cpu']}, {env['machine']['cores']} cores, "
        f"{env['machine']['system']}",
        f"- python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f", regime3 commit {env['commit']}",
        "- recipe (R3_* of every run): "
        + ", ".join(f"{k}={v}" for k, v in sorted(plan.recipe.items())),
    ]
    for run in data["runs"]:
        if run["resumed_from"]:
            lines.append(
                f"- {run['mode']} seed {run['seed']} resumed from step(s) "
                + ", ".join(map(str, run["resumed_from"]))
            )
    return "\n".join(lines) + "\n"
