"""Rendering a problem as one chat JSONL line in the questionnaire's format."""

from __future__ import annotations

import json
import random
import re

import pytest

from codec.domains import default_codebook, generate
from codec.errors import CodebookError, DomainError
from codec.modes import Mode
from codec.problem import RenderSettings

LINE = re.compile(r"🤔{4}\n(?P<reasoning>.+)\n(?P<stops>🛑{2,4})\n(?P<answer>[^\n]+)", re.S)


@pytest.mark.parametrize("mode", [Mode.ENGLISH, Mode.CANONICAL, Mode.ENCODED])
def test_chat_line_format(mode: Mode) -> None:
    problem = next(generate("arithmetic", count=1, difficulty=2, seed=1))
    line = problem.render(mode, default_codebook(), random.Random(0))
    assert json.loads(json.dumps(line, ensure_ascii=False)) == line
    user, assistant = line["messages"]
    assert user == {"role": "user", "content": problem.question}
    assert assistant["role"] == "assistant"
    match = LINE.fullmatch(assistant["content"])
    assert match, assistant["content"]
    assert match["answer"] == problem.golden_text
    assert line["meta"] == {
        "id": problem.id,
        "domain": "arithmetic",
        "difficulty": 2,
        "golden": problem.golden_text,
        "mode": mode.value,
    }


def test_stop_count_is_seeded_and_varies() -> None:
    problem = next(generate("word", count=1, difficulty=1, seed=1))
    rng = random.Random(5)
    counts = [problem.assistant_content(Mode.CANONICAL, rng=rng).count("🛑") for _ in range(60)]
    assert set(counts) == {2, 3, 4}
    again = random.Random(5)
    assert counts == [
        problem.assistant_content(Mode.CANONICAL, rng=again).count("🛑") for _ in range(60)
    ]


def test_settings() -> None:
    problem = next(generate("word", count=1, difficulty=1, seed=1))
    line = problem.render(Mode.ENGLISH, settings=RenderSettings(think_repeat=2, include_meta=False))
    assert "meta" not in line
    assert line["messages"][1]["content"].startswith("🤔🤔\n")
    with pytest.raises(DomainError, match="think_repeat"):
        RenderSettings(think_repeat=0)


def test_render_needs_a_concrete_mode_and_encoded_needs_a_codebook() -> None:
    problem = next(generate("word", count=1, difficulty=1, seed=1))
    with pytest.raises(DomainError, match="schedule_for"):
        problem.render(Mode.MIXED)
    with pytest.raises(CodebookError, match="codebook"):
        problem.render(Mode.ENCODED)
