"""Runs a study: data once, one trainer process per (mode, seed), progress, events, report.

Runs go `parallel` at a time, each a subprocess (`services.study.run`) with one torch thread,
its own data dir under `<out>/runs/<mode>-s<seed>/` and its own Redis database
(`services.study.namespace`). The user's bus (R3_REDIS_URL) receives only the study's events:
`study.progress` at every evaluation point and at each run's end, `study.report` at the end,
the report JSON at `r3:study:<id>` (rewritten as the study goes, so the dashboard shows it
live) and the id in `r3:studies`. A finished run is never trained again; a partial one
resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bus import keys
from bus.events import StudyProgress, StudyReport, StudyState
from bus.publish import Publisher
from services.feeder.demo import DEMO_TRAINER_ENV, user_value, user_variables
from services.study import report as reports
from services.study.data import train_path, validation_root
from services.study.namespace import Namespaces, namespaces
from services.study.plan import RunSpec, StudyPlan
from services.study.plots import write_plots
from services.study.run import (
    CURVE_FILE,
    DONE_FILE,
    RESUMES_FILE,
    RUN_FILE,
    STEPS_FILE,
    read_jsonl,
)
from settings.base import PREFIX, RENAMED

ROOT = Path(__file__).resolve().parents[2]
# The `.env` every run's settings read: the runs start in ROOT, and settings read `.env` from
# their working directory.
ENV_FILE = ROOT / ".env"
INVOCATIONS_FILE = "invocations.jsonl"  # wall seconds of each invocation, for the total

# Settings a run gets unless the user's environment sets them (the user wins): the demo's
# recipe (the embedded model learns syllogisms on a CPU with it), one torch thread per run,
# and a file that never ends before the step count (the study stops each run itself).
STUDY_DEFAULTS: dict[str, str] = {
    **DEMO_TRAINER_ENV,
    "R3_TORCH_THREADS": "1",
    "R3_EPOCHS": "1000",
    "R3_KEEP_LAST_CHECKPOINTS": "2",
    "R3_SNAPSHOT_DAYS": "0",
    "R3_PROBE_COUNT": "0",
    "R3_SAMPLE_MAX_NEW_TOKENS": "32",
}
# Per-run paths: a user's value would make the runs share them.
PER_RUN = ("R3_CHECKPOINT_DIR", "R3_REJECTS_DIR", "R3_TRAIN_LEDGER", "R3_VALIDATION_DIR")
# Set by the study for each run, whatever the environment says.
FORCED = (
    "R3_REDIS_URL",
    "R3_DATA_DIR",
    "R3_FIXED_EVAL_SETS",
    "R3_EVAL_EXAMPLES",
    "R3_EVAL_STEPS",
    "R3_SEED",
)


def trainer_variables() -> set[str]:
    """The R3_* names of the trainer's settings: what a run's recipe may hold (and what the
    report may show: never a token or URL of the user's other services)."""
    from checkpoints.settings import CheckpointSettings
    from services.trainer.config import TrainerSettings
    from services.trainer.loop_config import LoopSettings

    classes = (TrainerSettings, LoopSettings, CheckpointSettings)
    return {f"R3_{name.upper()}" for c in classes for name in c.model_fields}


def recipe(
    eval_every: int, environ: Mapping[str, str], env_file: Path | None = None
) -> dict[str, str]:
    """The trainer's R3_* every run trains with: the study's defaults, then the user's
    variables from the environment or `env_file` (default: the runs' `.env`; the user wins, an
    old renamed variable as its new name), then what the study decides itself (paths, Redis,
    eval set, cadence, seed). Every run's process gets exactly this (`run_environment`)."""
    env_file = ENV_FILE if env_file is None else env_file
    chosen = dict(STUDY_DEFAULTS)
    chosen["R3_SAVE_STEPS"] = str(eval_every)  # a kill loses at most one evaluation period
    allowed = trainer_variables() - set(PER_RUN + FORCED)
    mine = user_variables(environ, env_file)
    for name in sorted(mine & allowed):
        value = user_value(name, environ, env_file)
        if value:
            chosen[name] = value
    for old, renamed in RENAMED.items():  # given only under its old name
        new = PREFIX + renamed.new.upper()
        value = user_value(old, environ, env_file)
        if new in allowed and value and not user_value(new, environ, env_file):
            chosen[new] = f"{float(value) * renamed.scale:g}" if renamed.scale else value
    chosen["R3_EVAL_STEPS"] = str(eval_every)
    return chosen


def run_environment(recipe: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """A run's process environment: `environ` without any trainer variable (nor an old name of
    one), then the recipe: what a run trains with is the report's recipe, whatever this
    invocation's environment says (a resumed study keeps its first recipe)."""
    trainer = trainer_variables() | {
        old for old, r in RENAMED.items() if PREFIX + r.new.upper() in trainer_variables()
    }
    env = {k: v for k, v in environ.items() if k not in trainer}
    env.update(recipe)
    return env


def run_dir(out: Path, run: RunSpec) -> Path:
    return out / "runs" / run.name


@dataclass
class _Active:
    run: RunSpec
    proc: subprocess.Popen[bytes]
    url: str
    seen: int = 0  # curve points already reported


@dataclass
class Study:
    plan: StudyPlan
    out: Path
    main: redis.Redis
    parallel: int
    command: list[str]
    echo: Callable[[str], None] = print
    kill: dict[str, int] = field(default_factory=dict)  # run name -> step (tests)
    main_url: str = ""  # the user's bus, where borrowed databases come from
    model_dir: str | None = None  # the starting model every run loads (built once if embedded)
    failed: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    done_at_start: int = 0

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.main)
        self.env = reports.environment(self.command)

    # -- state of the runs, from their directories ------------------------------------------

    def result(self, run: RunSpec, active: bool = False) -> reports.RunResult:
        where = run_dir(self.out, run)
        steps = read_jsonl(where / STEPS_FILE)
        if (where / DONE_FILE).exists():
            state = "done"
        elif run.name in self.failed:
            state = "failed"
        elif active:
            state = "running"
        else:
            state = "partial" if steps else "pending"
        return reports.RunResult(
            mode=run.mode,
            seed=run.seed,
            state=state,
            steps_done=int(steps[-1]["step"]) if steps else 0,
            curve=read_jsonl(where / CURVE_FILE),
            resumes=[int(r["from_step"]) for r in read_jsonl(where / RESUMES_FILE)],
        )

    def _steps_done(self) -> int:
        return sum(self.result(r).steps_done for r in self.plan.runs)

    def _eta(self) -> str:
        done = self._steps_done()
        remaining = len(self.plan.runs) * self.plan.steps - done
        elapsed = time.monotonic() - self.started
        rate = (done - self.done_at_start) / elapsed if elapsed > 0 else 0.0
        if remaining <= 0:
            return _clock(0)
        return "?" if rate <= 0 else _clock(remaining / rate)

    # -- publishing ---------------------------------------------------------------------------

    def _report(self, active: set[str]) -> dict[str, Any]:
        runs = [self.result(r, r.name in active) for r in self.plan.runs]
        return reports.report(
            self.plan,
            runs,
            env=self.env,
            wall_seconds=self._earlier_seconds() + time.monotonic() - self.started,
            out=self.out,
            start_model=self.model_dir,
        )

    def _store(self, data: dict[str, Any]) -> None:
        self.main.set(keys.study_key(self.plan.study_id), json.dumps(data))

    def _progress(self, run: RunSpec, point: dict[str, Any] | None, state: StudyState) -> None:
        self.publisher.publish(
            StudyProgress(
                study_id=self.plan.study_id,
                mode=run.mode,
                seed=run.seed,
                step=int(point["step"]) if point else self.result(run).steps_done,
                total_steps=self.plan.steps,
                em=None if point is None else point["em"],
                answer_ce=None if point is None else point["answer_ce"],
                thinking_tokens=None if point is None else point["thinking_tokens"],
                parse_failures=None if point is None else point["parse_failures"],
                loss_tokens=None if point is None else point["loss_tokens"],
                state=state,
            )
        )

    # -- running ------------------------------------------------------------------------------

    def _spawn(self, run: RunSpec, url: str) -> subprocess.Popen[bytes]:
        where = run_dir(self.out, run)
        data = where / "data"
        data.mkdir(parents=True, exist_ok=True)
        spec = {
            "plan": self.plan.to_json(),
            "mode": run.mode,
            "seed": run.seed,
            "train_file": str(train_path(self.out, run).resolve()),
            "model": self.model_dir or self.plan.model,
        }
        (where / RUN_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        env = run_environment(self.plan.recipe, os.environ)
        env.update(
            R3_REDIS_URL=url,
            R3_DATA_DIR=str(data.resolve()),
            R3_CHECKPOINT_DIR=str((data / "checkpoints").resolve()),
            R3_VALIDATION_DIR=str(validation_root(self.out).resolve()),
            R3_FIXED_EVAL_SETS=f"{self.plan.domain}:{self.plan.difficulty}:{run.mode}",
            R3_EVAL_EXAMPLES=str(self.plan.eval_size),
            R3_SEED=str(run.seed),
            PYTHONUNBUFFERED="1",
        )
        command = [sys.executable, "-m", "services.study.run", str(where.resolve())]
        if run.name in self.kill:
            command += ["--kill-at", str(self.kill[run.name])]
        log = (where / "run.log").open("ab")
        try:
            # Its own session: a Ctrl-C in the terminal reaches only the study, which stops
            # the run with SIGTERM (a checkpoint at its step), not the run directly.
            return subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def _report_points(self, item: _Active) -> None:
        curve = read_jsonl(run_dir(self.out, item.run) / CURVE_FILE)
        for point in curve[item.seen :]:
            self._progress(item.run, point, "running")
            self.echo(
                f"{item.run.mode:>10} seed {item.run.seed}  step {point['step']:>4}/"
                f"{self.plan.steps}  EM {point['em']:.2f}  thinking "
                f"{_num(point['thinking_tokens'])}  answer CE {_num(point['answer_ce'], 3)}  "
                f"elapsed {_clock(time.monotonic() - self.started)}  study ETA {self._eta()}"
            )
        item.seen = max(item.seen, len(curve))

    def _finish(self, item: _Active, pool: Namespaces) -> None:
        self._report_points(item)
        pool.give(item.url)
        result = self.result(item.run)
        if result.state == "done":
            self._progress(item.run, result.curve[-1] if result.curve else None, "done")
            self.echo(f"{item.run.name}: done at step {result.steps_done}")
            return
        self.failed.add(item.run.name)
        self._progress(item.run, None, "failed")
        tail = (run_dir(self.out, item.run) / "run.log").read_text(errors="replace")
        tail = "\n    ".join(tail.strip().splitlines()[-8:])
        self.echo(
            f"{item.run.name}: stopped at step {result.steps_done} (exit "
            f"{item.proc.returncode}); re-run the same command to resume it. Its log ends:\n"
            f"    {tail}"
        )

    def run(self) -> dict[str, Any]:
        """Train every unfinished run; the report's dict (also written and published)."""
        runs = self.plan.runs
        # The longest runs first (English reasons ~4x longer), so none is left alone at the end.
        todo = sorted(
            (r for r in runs if self.result(r).state != "done"), key=lambda r: r.mode != "english"
        )
        self.done_at_start = self._steps_done()
        for r in runs:
            if r not in todo:
                self.echo(f"{r.name}: finished earlier, kept")
            elif self.result(r).steps_done:
                self.echo(f"{r.name}: resuming (trained to step {self.result(r).steps_done})")
        self.main.zadd(keys.STUDIES, {self.plan.study_id: self.plan.started})
        self._store(self._report(set()))
        active: list[_Active] = []
        parallel = max(1, min(self.parallel, len(todo) or 1))
        with namespaces(self.main_url, self.plan.study_id, parallel) as pool:
            try:
                self.echo(
                    f"study {self.plan.study_id}: {len(todo)} of {len(runs)} runs to train, "
                    f"{parallel} at a time, each on its own Redis database ({pool.where})"
                )
                while todo or active:
                    while todo and len(active) < parallel:
                        run = todo.pop(0)
                        url = pool.take()
                        active.append(_Active(run, self._spawn(run, url), url))
                    time.sleep(0.5)
                    changed = False
                    for item in list(active):
                        before = item.seen
                        self._report_points(item)
                        changed |= item.seen != before
                        if item.proc.poll() is not None:
                            active.remove(item)
                            self._finish(item, pool)
                            changed = True
                    if changed:
                        self._store(self._report({a.run.name for a in active}))
            except KeyboardInterrupt:
                # Inside the `with`: the runs' Redis (a private server) is still up while they
                # save their checkpoints, and their borrowed databases are given back.
                self._stop(active, pool)
                self.echo("interrupted: re-run the same command to resume the unfinished runs")
                self._finalize()
                raise
        return self._finalize()

    def _stop(self, active: list[_Active], pool: Namespaces) -> None:
        """SIGTERM every active run (each saves a checkpoint after its step and stops), wait
        for them, give their databases back."""
        for item in active:
            if item.proc.poll() is None:
                item.proc.send_signal(signal.SIGTERM)
        for item in active:
            try:
                item.proc.wait(120)
            except subprocess.TimeoutExpired:
                item.proc.kill()
                item.proc.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                for other in active:
                    if other.proc.poll() is None:
                        other.proc.kill()
                        other.proc.wait()
            self._report_points(item)
            pool.give(item.url)

    def _finalize(self) -> dict[str, Any]:
        data = self._report(set())  # its wall time counts this invocation
        self._record_invocation()
        return self._write(data)

    def _record_invocation(self) -> None:
        row = {"started": time.time() - (time.monotonic() - self.started)}
        row["seconds"] = round(time.monotonic() - self.started, 1)
        with (self.out / INVOCATIONS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def _earlier_seconds(self) -> float:
        """Wall seconds of the earlier invocations of this study (a resumed study's total)."""
        return sum(float(r["seconds"]) for r in read_jsonl(self.out / INVOCATIONS_FILE))

    def _write(self, data: dict[str, Any]) -> dict[str, Any]:
        (self.out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
        (self.out / "report.md").write_text(reports.markdown(data))
        write_plots(data, self.out)
        self._store(data)
        self.publisher.publish(
            StudyReport(
                study_id=self.plan.study_id,
                domain=self.plan.domain,
                difficulty=self.plan.difficulty,
                modes=list(self.plan.modes),
                seeds=list(self.plan.seeds),
                steps=self.plan.steps,
                table=data["table"],
                report_path="report.json",  # in --out: the open /events names no host path
            )
        )
        return data


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
