"""A study on the user's own canonical data: read, split, rendered per mode, trained."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from codec.domains import generate
from codec.modes import Mode
from services.cli.main import cli
from services.study.errors import StudyError
from services.study.userdata import read_data


def _user_file(path: Path, count: int = 80, english: bool = True) -> Path:
    """Lines as a user would write them: canonical reasoning, an answer, meta.english."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as handle:
        for problem in generate("syllogism", count=count, difficulty=1, seed=5, split="train"):
            line = problem.render(Mode.CANONICAL, None, rng)
            line["meta"] = {"english": problem.english} if english else {}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def test_user_lines_are_parsed_split_by_question_and_checked(tmp_path: Path) -> None:
    data = read_data(_user_file(tmp_path / "My Data.jsonl"), modes=("english",), eval_size=4)
    assert data.name == "my_data"
    assert 0 < len(data.heldout) <= 4 and len(data.train) > 50
    assert not {p.id for p in data.heldout} & {p.id for p in data.train}
    assert all(p.english for p in data.train) and all(p.steps for p in data.train)
    plain = _user_file(tmp_path / "plain.jsonl", english=False)
    with pytest.raises(StudyError, match=r"plain.jsonl:1: --modes has english but the line"):
        read_data(plain, modes=("english", "encoded"), eval_size=4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        plain.read_text().splitlines()[0]
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "🤔\nnot (an s-expression\n🛑🛑\n4"},
                ]
            }
        )
        + "\n"
    )
    with pytest.raises(StudyError, match=r"bad.jsonl:2: the reasoning or answer is not canonical"):
        read_data(bad, modes=("canonical",), eval_size=4)


def test_a_study_on_user_data_trains_every_mode_on_it(
    r: redis.Redis, embedded_dir: Path, tmp_path: Path
) -> None:
    source = _user_file(tmp_path / "mine.jsonl", english=False)
    out = tmp_path / "study"
    args = ["study", "modes", "--data", str(source), "--modes", "canonical,assorted"]
    args += ["--seeds", "1", "--steps", "2", "--eval-every", "2", "--eval-size", "3"]
    args += ["--model", str(embedded_dir), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["domain"] == "mine" and report["plan"]["data"] == str(source.resolve())
    assert {row["mode"] for row in report["table"]} == {"canonical", "assorted"}
    questions = {json.loads(t)["messages"][0]["content"] for t in source.read_text().splitlines()}
    for mode in ("canonical", "assorted"):
        held = (out / "validation" / f"mine-d0-{mode}.jsonl").read_text().splitlines()
        trained = (out / "data" / f"{mode}-s1.jsonl").read_text().splitlines()
        held_q = {json.loads(t)["messages"][0]["content"] for t in held}
        train_q = [json.loads(t)["messages"][0]["content"] for t in trained]
        assert held_q <= questions and set(train_q) <= questions and not held_q & set(train_q)
    # The same problems in the same order in every mode of a seed.
    orders = [
        [json.loads(t)["messages"][0]["content"] for t in (out / "data" / f"{m}-s1.jsonl").open()]
        for m in ("canonical", "assorted")
    ]
    assert orders[0] == orders[1]
