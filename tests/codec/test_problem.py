"""Rendering a problem as one chat JSONL line in the questionnaire's format."""

from __future__ import annotations

import json
import random
import re

import pytest

from codec.domains import DOMAINS, default_codebook, generate
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
    stamp = {"codebook": default_codebook().version} if mode is Mode.ENCODED else {}
    assert line["meta"] == {
        "id": problem.id,
        "domain": "arithmetic",
        "difficulty": 2,
        "golden": problem.golden_text,
        "mode": mode.value,
        **stamp,
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
    with pytest.raises(CodebookError, match="assorted mode needs a codebook"):
        problem.render(Mode.ASSORTED)
    with pytest.raises(DomainError, match="coded steps 99 out of range"):
        problem.assorted_reasoning(default_codebook(), 99)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_assorted_reasoning_decodes_to_the_canonical_for_every_split_point(domain: str) -> None:
    codebook = default_codebook()
    level = DOMAINS[domain].levels[-1]
    for problem in generate(domain, count=8, difficulty=level, seed=4):
        n = len(problem.steps)
        plain = problem.canonical_reasoning.split("\n")
        texts = [problem.assorted_reasoning(codebook, m) for m in range(n + 1)]
        assert texts[0] == problem.canonical_reasoning
        assert texts[n] == codebook.encode(problem.canonical_reasoning)
        for m, text in enumerate(texts):
            assert codebook.decode(text) == problem.canonical_reasoning, (m, text)
            # the first m steps are one line of codes, the other n - m canonical lines
            lines = text.split("\n")
            assert lines[-(n - m) or len(lines) :] == plain[m:] if m < n else len(lines) == 1
            if 0 < m < n:
                assert len(lines) == n - m + 1 and "<E" in lines[0]


def test_assorted_draws_m_over_0_to_n_from_the_seeded_rng() -> None:
    codebook = default_codebook()
    problem = next(generate("syllogism", count=1, difficulty=1, seed=2))
    n = len(problem.steps)
    assert n >= 2

    def coded_steps(seed: int) -> list[int]:
        rng = random.Random(seed)
        out = []
        for _ in range(200):
            reasoning = LINE.fullmatch(
                problem.render(Mode.ASSORTED, codebook, rng)["messages"][1]["content"]
            )
            assert reasoning is not None
            text = reasoning["reasoning"]
            assert codebook.decode(text) == problem.canonical_reasoning
            plain = problem.canonical_reasoning.split("\n")
            out.append(
                next(m for m in range(n + 1) if text == problem.assorted_reasoning(codebook, m))
            )
            assert len(plain) == n
        return out

    first = coded_steps(7)
    assert set(first) == set(range(n + 1))  # every split point occurs, ends included
    assert coded_steps(7) == first  # seeded
    assert coded_steps(8) != first


def test_the_codebook_is_stamped_only_when_the_reasoning_holds_codes() -> None:
    codebook = default_codebook()
    problem = next(generate("syllogism", count=1, difficulty=1, seed=2))
    stamped = {False: 0, True: 0}
    rng = random.Random(1)
    for _ in range(50):
        line = problem.render(Mode.ASSORTED, codebook, rng)
        holds_codes = "<E" in line["messages"][1]["content"]
        assert ("codebook" in line["meta"]) is holds_codes
        if holds_codes:
            assert line["meta"]["codebook"] == codebook.version
        stamped[holds_codes] += 1
    assert stamped[False] and stamped[True]
    for mode in (Mode.ENGLISH, Mode.CANONICAL):
        assert "codebook" not in problem.render(mode, codebook)["meta"]
