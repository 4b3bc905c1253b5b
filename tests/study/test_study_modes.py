"""`regime3 study modes` end to end: the CLI, real trainer processes, real Redis, a killed run
resumed from its checkpoint, the report files and the study's events on the bus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bus import keys
from bus.broadcast import EARLIEST, BroadcastReader
from bus.events import StudyProgress, StudyReport
from services.cli.main import cli


def _study_events(r: redis.Redis) -> list[object]:
    return [d.event for d in BroadcastReader(r, {keys.STREAM_STUDY: EARLIEST}).read(0)]


def _steps(run: Path) -> list[int]:
    lines = (run / "steps.jsonl").read_text().splitlines()
    return [json.loads(text)["step"] for text in lines if text.strip()]


def test_a_tiny_study_reports_and_resumes_a_killed_run(
    r: redis.Redis, embedded_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "study"
    args = ["study", "modes", "--modes", "canonical,encoded", "--seeds", "1", "--steps", "6"]
    args += ["--eval-every", "3", "--eval-size", "4", "--parallel", "2"]
    args += ["--model", str(embedded_dir), "--out", str(out)]
    runner = CliRunner()

    # First: the encoded run is killed (SIGKILL) right after step 4; its last checkpoint is 3.
    first = runner.invoke(cli, [*args, "--kill-run", "encoded-s1:4"])
    assert first.exit_code == 1, first.output
    assert "encoded-s1: stopped at step 4" in first.output
    assert "re-run the same command" in first.output
    canonical, encoded = out / "runs" / "canonical-s1", out / "runs" / "encoded-s1"
    assert (canonical / "done.json").exists() and not (encoded / "done.json").exists()
    assert _steps(encoded) == [1, 2, 3, 4]
    canonical_steps = (canonical / "steps.jsonl").read_text()
    events = _study_events(r)
    failed = [e for e in events if isinstance(e, StudyProgress) and e.state == "failed"]
    assert [(e.mode, e.seed) for e in failed] == [("encoded", 1)]
    partial = json.loads((out / "report.json").read_text())
    assert partial["state"] == "incomplete"

    # Again, the same command: the finished run is kept, the killed one resumes from step 3.
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "canonical-s1: finished earlier, kept" in second.output
    assert "encoded-s1: resuming" in second.output
    assert (canonical / "steps.jsonl").read_text() == canonical_steps  # not trained again
    assert _steps(encoded) == [1, 2, 3, 4, 5, 6]  # step 4 dropped with its lost work, once
    resumes = [
        json.loads(t)["from_step"] for t in (encoded / "resumes.jsonl").read_text().splitlines()
    ]
    assert resumes == [3]
    assert not (canonical / "resumes.jsonl").exists()

    # The report: files, table rows, curves.
    data = json.loads((out / "report.json").read_text())
    assert data["state"] == "done"
    rows = {(row["mode"], row["seed"]): row for row in data["table"]}
    assert set(rows) == {("canonical", None), ("canonical", 1), ("encoded", None), ("encoded", 1)}
    for row in rows.values():
        assert row["step"] == 6 and 0.0 <= row["em"] <= 1.0
        assert row["answer_ce"] is not None and row["answer_ce"] > 0
        assert row["thinking_tokens"] is not None and row["parse_failures"] is not None
        assert row["eval_size"] == 4
    assert rows[("encoded", None)]["thinking_vs_canonical"] is not None or (
        rows[("canonical", None)]["thinking_tokens"] == 0
    )
    for run in data["runs"]:
        assert [p["step"] for p in run["curve"]] == [3, 6]
        tokens = [p["loss_tokens"] for p in run["curve"]]
        assert 0 < tokens[0] < tokens[1]
    assert [run["resumed_from"] for run in data["runs"]] == [[], [3]]
    env = data["environment"]
    assert env["machine"]["cores"] and env["versions"]["torch"] and "study modes" in env["command"]
    md = (out / "report.md").read_text()
    assert "| **canonical** | mean |" in md and "| encoded | 1 |" in md
    assert "answer CE" in md and "encoded seed 1 resumed from step(s) 3" in md
    for name in ("em_vs_steps.png", "em_vs_loss_tokens.png", "thinking_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The user's bus got the study's events and its report, nothing of the runs' own.
    events = _study_events(r)
    progress = [e for e in events if isinstance(e, StudyProgress) and e.state == "running"]
    assert {(e.mode, e.step) for e in progress} == {
        ("canonical", 3),
        ("canonical", 6),
        ("encoded", 3),
        ("encoded", 6),
    }
    assert all(e.total_steps == 6 and e.em is not None for e in progress)
    done = [e for e in events if isinstance(e, StudyProgress) and e.state == "done"]
    assert sorted(e.mode for e in done) == ["canonical", "encoded"]
    reports = [e for e in events if isinstance(e, StudyReport)]
    assert reports[-1].study_id == data["study_id"] and len(reports[-1].table) == 4
    assert reports[-1].report_path == "report.json"  # in --out, no host path on /events
    assert r.zscore(keys.STUDIES, data["study_id"]) is not None
    stored = json.loads(r.get(keys.study_key(data["study_id"])) or b"{}")
    assert stored["state"] == "done" and stored["table"] == data["table"]
    assert r.xlen(keys.STREAM_TRAINING) == 0 and r.xlen(keys.STREAM_EVAL) == 0


def test_a_study_refuses_another_studys_folder_and_bad_options(
    r: redis.Redis, tmp_path: Path
) -> None:
    runner = CliRunner()
    bad = runner.invoke(
        cli, ["study", "modes", "--modes", "english,klingon", "--out", str(tmp_path)]
    )
    assert bad.exit_code != 0 and "'klingon' is not a study mode" in bad.output
    level = runner.invoke(cli, ["study", "modes", "--difficulty", "9", "--out", str(tmp_path)])
    assert level.exit_code != 0 and "--difficulty 9 is not a level of syllogism" in level.output
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_text(
        json.dumps(
            {
                "study_id": "x",
                "domain": "syllogism",
                "difficulty": 1,
                "modes": ["english"],
                "seeds": [1],
                "steps": 5,
                "eval_every": 5,
                "eval_size": 4,
                "target": 0.9,
                "model": None,
                "started": 0.0,
                "recipe": {},
            }
        )
    )
    other = runner.invoke(cli, ["study", "modes", "--steps", "7", "--out", str(tmp_path / "s")])
    assert other.exit_code != 0
    assert "holds another study" in other.output and "steps: stored 5, asked 7" in other.output


@pytest.mark.parametrize("modes", ["", "english,english"])
def test_modes_must_be_distinct_and_given(modes: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["study", "modes", "--modes", modes, "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--modes" in result.output


def test_one_study_at_a_time_on_a_folder(tmp_path: Path) -> None:
    from services.study.plan import locked

    with locked(tmp_path / "s"):
        busy = CliRunner().invoke(cli, ["study", "modes", "--out", str(tmp_path / "s")])
    assert busy.exit_code != 0
    assert "is in use by a study running now (pid" in busy.output


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_users_codebook_encodes_the_data_the_sets_and_the_runs_tokens(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    # R3_CODEBOOK set for the trainer (in the environment or .env) must also be the codebook
    # the study encodes with: data stamped with the built-in one would fail the run's file.
    from codec.codebook import Codebook, codebook_in
    from codec.domains import default_codebook

    mine = Codebook(default_codebook().fragments[:64])
    assert mine.version != default_codebook().version
    path = tmp_path / "mine.json"
    mine.save(path)
    env_file = tmp_path / ".env"  # stands for the runs' .env (the checkout's, never touched)
    monkeypatch.setattr("services.study.runner.ENV_FILE", env_file)
    monkeypatch.setattr("services.cli.study_commands.ENV_FILE", env_file)
    monkeypatch.delenv("R3_CODEBOOK", raising=False)
    if where == "environment":
        monkeypatch.setenv("R3_CODEBOOK", str(path))
    else:
        env_file.write_text(f"R3_CODEBOOK={path}\n")
    out = tmp_path / "study"
    args = ["study", "modes", "--modes", "encoded", "--seeds", "1", "--steps", "2"]
    args += ["--eval-every", "2", "--eval-size", "2", "--parallel", "1"]
    args += ["--model", str(embedded_dir), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    [train] = (out / "data").glob("*encoded*.jsonl")
    stamps = {json.loads(t)["meta"].get("codebook") for t in train.read_text().splitlines()}
    assert stamps == {mine.version}
    [held] = (out / "validation").glob("*encoded*.jsonl")
    assert {json.loads(t)["meta"].get("codebook") for t in held.read_text().splitlines()} == {
        mine.version
    }
    saved = [codebook_in(p.parent) for p in (out / "runs").rglob("codebook.json")]
    assert saved and {c.version for c in saved if c is not None} == {mine.version}
    data = json.loads((out / "report.json").read_text())
    assert data["plan"]["codebook"] == str(path.resolve())
    assert data["plan"]["recipe"]["R3_CODEBOOK"] == str(path.resolve())
    assert f"--codebook {path.resolve()}" in data["environment"]["command"]


def test_ctrl_c_stops_the_runs_with_a_checkpoint_and_the_study_resumes_there(
    redis_url: str, embedded_dir: Path, tmp_path: Path
) -> None:
    # A terminal's Ctrl-C: SIGINT to the study's process group. The runs are in sessions of
    # their own: the study SIGTERMs them, each saves a checkpoint at its step and stops, and
    # the same command resumes from there (no step trained twice, none lost).
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    args = [sys.executable, "-m", "services.cli", "study", "modes", "--modes", "canonical"]
    args += ["--seeds", "1", "--steps", "12", "--eval-every", "12", "--eval-size", "2"]
    args += ["--parallel", "1", "--model", str(embedded_dir), "--out", str(out)]
    env = {**os.environ, "R3_REDIS_URL": redis_url}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        args, env=env, cwd=root, start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    run = out / "runs" / "canonical-s1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "steps.jsonl").exists() and len(_steps(run)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted: re-run" in output, output
    stopped = _steps(run)
    assert 2 <= len(stopped) < 12 and stopped == list(range(1, len(stopped) + 1))
    assert not (run / "done.json").exists()

    again = subprocess.run(args, env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    resumes = [json.loads(t)["from_step"] for t in (run / "resumes.jsonl").read_text().splitlines()]
    assert resumes == [stopped[-1]]  # the checkpoint saved at the stop
    assert _steps(run) == list(range(1, 13))


def test_the_starting_model_is_fixed_in_the_plan(
    r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A study begun on the embedded model (R3_MODEL unset) is not resumed from other weights
    # because R3_MODEL is set now: its pending runs would start from another model.
    from services.model.config import get_model_settings
    from services.study.plan import EMBEDDED_MODEL, load_or_store, new_plan

    def plan(model: str) -> object:
        return new_plan(
            domain="syllogism",
            difficulty=1,
            modes=("canonical",),
            seeds=(1,),
            steps=5,
            eval_every=5,
            eval_size=4,
            target=0.9,
            model=model,
            recipe={},
        )

    out = tmp_path / "s"
    _, resumed = load_or_store(out, plan(EMBEDDED_MODEL))  # type: ignore[arg-type]
    assert not resumed and json.loads((out / "study.json").read_text())["model"] == "embedded"
    other = tmp_path / "other-model"
    other.mkdir()
    monkeypatch.setenv("R3_MODEL", str(other))
    get_model_settings.cache_clear()
    try:
        args = ["study", "modes", "--modes", "canonical", "--seeds", "1", "--steps", "5"]
        args += ["--eval-every", "5", "--eval-size", "4", "--out", str(out)]
        result = CliRunner().invoke(cli, args)
    finally:
        get_model_settings.cache_clear()
    assert result.exit_code != 0 and "holds another study" in result.output
    assert f"model: stored 'embedded', asked '{other.resolve()}'" in result.output


def test_a_missing_matplotlib_is_said_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = CliRunner().invoke(cli, ["study", "modes", "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "pip install 'regime3[study]'" in result.output
    assert not (tmp_path / "s").exists()  # nothing drawn, nothing trained
