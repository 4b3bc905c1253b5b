"""One run of a study, in its own process: `python -m services.study.run RUN_DIR [--kill-at N]`.

The run trains its mode's file through the real trainer (`services.trainer.loop.Trainer`:
validation, packing, checkpoints, the fixed evaluation) on its own data dir and its own Redis
database (R3_DATA_DIR, R3_REDIS_URL, set by the study), and stops exactly at the plan's step
count with a checkpoint. What the study reads, beside the trainer's checkpoints, is written
to RUN_DIR as it happens:

- `steps.jsonl`: {"step", "loss_tokens", "time"} of every optimizer step, written before it
  (a step a kill cut short is dropped on resume: the checkpoint says where training stands);
- `curve.jsonl`: one evaluation point per line (step, EM, answer CE, thinking tokens, parse
  failures, CE, loss tokens trained up to that step, time);
- `resumes.jsonl`: the step each restart resumed from (the trainer's own resume: the newest
  checkpoint's weights, optimizer and data cursor);
- `done.json`: written when the run has reached its step count.

Started again after a kill, it resumes from the newest checkpoint, so no step is trained
twice. `--kill-at N` SIGKILLs the process right after step N (tests of that resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from services.study.namespace import clear
from services.study.plan import RunSpec, StudyPlan
from services.trainer.fixed_eval import FixedEvalOutcome
from services.trainer.loop import Trainer, TrainingInterrupted
from services.trainer.packing import StepRows
from services.trainer.resume import FileProgress

log = logging.getLogger("services.study.run")

RUN_FILE = "run.json"
STEPS_FILE = "steps.jsonl"
CURVE_FILE = "curve.jsonl"
RESUMES_FILE = "resumes.jsonl"
DONE_FILE = "done.json"
EXIT_STOPPED = 3  # stopped on request (SIGTERM) before the step count: resume later
# Set by SIGTERM or SIGINT, from the start of the process: a stop asked while the trainer is
# being built or is validating its file (which clears the trainer's own flag) still stops it
# after its next step, with a checkpoint.
STOP = threading.Event()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.strip():
            try:
                rows.append(json.loads(text))
            except ValueError:
                break  # a line cut by a kill: the last, and dropped
    return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()


def _keep_until(path: Path, step: int) -> list[dict[str, Any]]:
    """Drop the rows of steps after `step` (trained after the checkpoint resumed from)."""
    rows = [r for r in read_jsonl(path) if int(r["step"]) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


class StudyTrainer(Trainer):
    """The trainer, stopped exactly at `stop_at` steps, recording steps and evaluations."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        run_dir: Path,
        stop_at: int,
        kill_at: int | None,
        model_path: str | None,
    ) -> None:
        super().__init__(connection, model_path=model_path)
        self.run_dir = run_dir
        self.stop_at = stop_at
        self.kill_at = kill_at
        steps = _keep_until(run_dir / STEPS_FILE, self.global_step)
        self.curve = _keep_until(run_dir / CURVE_FILE, self.global_step)
        self.loss_tokens = sum(int(r["loss_tokens"]) for r in steps)

    def _after_step(self, step: StepRows, state: FileProgress) -> None:
        number = self.global_step + 1
        if number >= self.stop_at or STOP.is_set():
            self.request_stop()  # the loop saves a checkpoint after this step and stops
        self.loss_tokens += step.loss_tokens
        _append(
            self.run_dir / STEPS_FILE,
            {"step": number, "loss_tokens": step.loss_tokens, "time": round(time.time(), 3)},
        )
        super()._after_step(step, state)
        if self.kill_at is not None and self.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def _fixed_eval(self, checkpoint_id: str | None = None) -> FixedEvalOutcome | None:
        outcome = super()._fixed_eval(checkpoint_id)
        if outcome is None or (self.curve and self.curve[-1]["step"] >= outcome.step):
            return outcome
        [result] = outcome.per_set.values()  # a study run has one set: its mode's
        point = {
            "step": outcome.step,
            "em": result.em,
            "answer_ce": result.answer_ce,
            "thinking_tokens": result.thinking_tokens,
            "parse_failures": result.parse_failures,
            "total": result.total,
            "ce": result.ce,
            "max_tokens": result.max_tokens,
            "loss_tokens": self.loss_tokens,
            "time": time.time(),
        }
        self.curve.append(point)
        _append(self.run_dir / CURVE_FILE, point)
        return outcome


def run(run_dir: Path, kill_at: int | None = None) -> int:
    spec = json.loads((run_dir / RUN_FILE).read_text())
    plan = StudyPlan.from_json(spec["plan"])
    me = RunSpec(spec["mode"], int(spec["seed"]))
    trainer: StudyTrainer | None = None

    def stop(*_: object) -> None:
        STOP.set()
        if trainer is not None:
            trainer.request_stop()

    # Before the trainer exists: a stop while it loads must not kill it without a checkpoint.
    # SIGINT too: a Ctrl-C that reaches the run (the study starts it in its own session, but
    # a user may signal it) stops it like SIGTERM does.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    connection = redis.Redis.from_url(os.environ["R3_REDIS_URL"])
    clear(connection)  # the study gave this run the database for itself (its claim kept)
    trainer = StudyTrainer(
        connection,
        run_dir=run_dir,
        stop_at=plan.steps,
        kill_at=kill_at,
        model_path=spec.get("model") or plan.model,
    )
    if trainer.global_step:
        _append(run_dir / RESUMES_FILE, {"from_step": trainer.global_step, "time": time.time()})
        log.info("%s: resuming from step %d", me.name, trainer.global_step)
    if trainer.global_step < plan.steps and not STOP.is_set():
        trainer.pending_resume = trainer.latest_cursor
        with contextlib.suppress(TrainingInterrupted):  # the stop at the step count
            trainer.train_file(Path(spec["train_file"]), job_id=me.name, name=f"{me.name}.jsonl")
    if trainer.global_step < plan.steps:
        # The file ended first (the study sizes it and sets R3_EPOCHS high, so only a stop
        # does this): the checkpoint holds the cursor, the next invocation goes on.
        log.warning("%s: stopped at step %d of %d", me.name, trainer.global_step, plan.steps)
        return EXIT_STOPPED
    if not trainer.curve or trainer.curve[-1]["step"] < trainer.global_step:
        trainer._fixed_eval()  # the last step is always scored, on the eval cadence or not
    (run_dir / DONE_FILE).write_text(
        json.dumps({"step": trainer.global_step, "time": time.time()}) + "\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(args.run_dir, args.kill_at)


if __name__ == "__main__":
    sys.exit(main())
