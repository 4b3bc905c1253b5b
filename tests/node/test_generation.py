"""Generation's data logic: kept traces, self-corrections, the golden fallback, the shard."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from codec.domains import default_codebook, generate
from codec.evaluate import evaluate_output, split_output
from codec.modes import Mode
from codec.problem import Problem, RenderSettings
from services.model.loading import load_tokenizer
from services.node.worker.generation import (
    Attempt,
    build_line,
    reasoning_mode,
    selfcorrection_problem,
    write_shard,
)
from services.node.worker.node_client import Reply
from services.trainer.config import TrainerSettings
from services.trainer.tokenize import ChatTokenizer
from services.trainer.validate import validate_file

CODEBOOK = default_codebook()


def problem(domain: str, difficulty: int = 2, seed: int = 3) -> Problem:
    return next(generate(domain, count=1, difficulty=difficulty, seed=seed))


def line_for(p: Problem, text: str, mode: Mode = Mode.ENGLISH, fallback: str = "golden"):  # type: ignore[no-untyped-def]
    return build_line(
        Attempt(p, Reply(text, "model-7"), mode),
        rng=random.Random(0),
        settings=RenderSettings(),
        codebook=CODEBOOK,
        fallback=fallback,  # type: ignore[arg-type]
    )


def content(line: dict) -> str:  # type: ignore[type-arg]
    return str(line["messages"][-1]["content"])


def test_a_correct_attempt_is_kept_as_the_models_own_trace_with_normalized_markers() -> None:
    p = problem("arithmetic")
    own = f"🤔🤔\nI add the numbers carefully.\n🛑🛑🛑🛑🛑\n{p.golden_text}."
    line, source, kind = line_for(p, own)
    assert (source, kind) == ("model", "correct")
    assert content(line) == f"🤔🤔🤔🤔\nI add the numbers carefully.\n🛑🛑🛑\n{p.golden_text}"
    assert line["messages"][0] == {"role": "user", "content": p.question}
    assert line["meta"] | {} == {
        "id": p.id,
        "domain": "arithmetic",
        "difficulty": 2,
        "golden": p.golden_text,
        "mode": "english",
        "source": "model",
        "attempt": "correct",
        "model": "model-7",
    }


def test_a_correct_answer_with_broken_canonical_reasoning_is_not_kept() -> None:
    p = problem("arithmetic")
    line, source, kind = line_for(p, f"🤔🤔🤔🤔\n(let v1 (add 1\n🛑🛑\n{p.golden_text}")
    assert kind == "correct" and source == "golden"  # fell back: the trace does not parse
    assert content(line) != f"🤔🤔🤔🤔\n(let v1 (add 1\n🛑🛑\n{p.golden_text}"


@pytest.mark.parametrize("mode", [Mode.ENGLISH, Mode.CANONICAL, Mode.ENCODED])
def test_a_wrong_numeric_answer_becomes_a_selfcorrection_of_that_answer(mode: Mode) -> None:
    p = problem("word", difficulty=3)
    wrong = int(p.golden_text) + 10
    line, source, kind = line_for(p, f"🤔🤔🤔🤔\nguess\n🛑🛑\n{wrong}", mode)
    assert (source, kind) == ("selfcorrect", "wrong")
    text = content(line)
    assert evaluate_output(text, p.golden, codebook=CODEBOOK).match
    parts = split_output(text)
    assert parts is not None
    reasoning = parts[0]
    if mode is Mode.ENCODED:
        reasoning = CODEBOOK.decode(reasoning)
    if mode is Mode.ENGLISH:
        assert f"not {wrong}" in reasoning and "I made a mistake there" in reasoning
    else:
        assert f"{wrong})" in reasoning and "(check v" in reasoning and "(revise v" in reasoning
    assert line["meta"]["mode"] == mode.value


def test_selfcorrection_is_the_codec_selfcorrect_shape_at_the_last_step() -> None:
    p = problem("arithmetic", difficulty=3)
    fixed = selfcorrection_problem(p, int(p.golden_text) - 1)
    assert fixed is not None and fixed.id == p.id and fixed.golden == p.golden
    names = [step[0].name for step in fixed.steps]  # type: ignore[index,union-attr]
    assert names[-4:] == ["let", "check", "revise", "ans"]
    assert fixed.steps[:-4] == p.steps[:-2]
    # The English states the slip where the last step is worked out, then checks it.
    assert f"{int(p.golden_text) - 1}." in fixed.english.split("Let me check")[0]
    # Not a number, or the right one: no self-correction.
    assert selfcorrection_problem(p, p.golden) is None
    assert selfcorrection_problem(problem("syllogism"), problem("syllogism").golden) is None


def test_unusable_attempts_fall_back_to_the_golden_trace_or_are_skipped() -> None:
    p = problem("syllogism")
    wrong = "invalid" if p.golden_text == "valid" else "valid"
    line, source, kind = line_for(p, f"🤔🤔🤔🤔\nhm\n🛑🛑\n{wrong}", Mode.CANONICAL)
    assert (source, kind) == ("golden", "wrong")
    golden = p.render(Mode.CANONICAL, None, random.Random(0))
    assert content(line) == golden["messages"][1]["content"]
    line, source, kind = line_for(p, "no markers at all", fallback="skip")
    assert (line, source, kind) == (None, None, "unparsed")


def test_reasoning_mode_detection() -> None:
    assert reasoning_mode("(let v1 (add 1 2) 3)") is Mode.CANONICAL
    assert reasoning_mode("<E017>3 4)7") is Mode.ENCODED
    assert reasoning_mode("First we add.") is Mode.ENGLISH


def test_the_shard_passes_the_trainers_validation(tmp_path: Path, embedded_dir: Path) -> None:
    lines = []
    for index, p in enumerate(generate("arithmetic", count=12, difficulty=2, seed=11)):
        attempts = [
            f"🤔\nwork\n🛑🛑\n{p.golden_text}",
            f"🤔🤔🤔🤔\nwork\n🛑🛑\n{int(p.golden_text) + 2}",
            "garbage without markers",
        ]
        mode = (Mode.ENGLISH, Mode.CANONICAL, Mode.ENCODED)[index % 3]
        line, _source, _kind = line_for(p, attempts[index % 3], mode)
        lines.append(line)
    path = tmp_path / "shard.jsonl"
    write_shard(lines, path)
    assert not path.with_name("shard.jsonl.part").exists()
    assert [json.loads(x)["meta"]["source"] for x in path.read_text().splitlines()] == [
        "model",
        "selfcorrect",
        "golden",
    ] * 4
    chat = ChatTokenizer(load_tokenizer(embedded_dir))
    report = validate_file(path, chat, TrainerSettings.model_validate({}))
    assert (report.lines, report.rejected, report.examples) == (12, 0, 12)
