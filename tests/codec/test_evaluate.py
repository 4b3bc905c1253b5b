"""Evaluation: answer equivalence, parse failures apart, results per pattern."""

from __future__ import annotations

import pytest

from codec.domains import default_codebook, generate
from codec.evaluate import aggregate, answers_equal, evaluate_output, parse_answer, split_output
from codec.modes import Mode
from codec.sexpr import read

CODEBOOK = default_codebook()


def output(answer: str, reasoning: str = "(ans 1)", stops: int = 3) -> str:
    return "🤔🤔🤔🤔\n" + reasoning + "\n" + "🛑" * stops + "\n" + answer


@pytest.mark.parametrize(
    ("predicted", "golden"),
    [
        ("2/4", "1/2"),
        ("0.5", "1/2"),
        ("(div 1 2)", "1/2"),
        ("(sub 3 (mul 2 1))", "1"),
        ("0.25", "(div 1 4)"),
        ("-7/2", "-3.5"),
        ("6/3", "2"),
        ("Valid", "valid"),
        ("53.", "53"),
    ],
)
def test_equivalent_answers_match(predicted: str, golden: str) -> None:
    result = evaluate_output(output(predicted), golden)
    assert result.match and not result.parse_failed, result


def test_match_says_how() -> None:
    assert answers_equal(read("(add x 1)"), read("(add 1 x)")) == (True, "canonical form")
    assert answers_equal(read("(div 1 2)"), read("0.5")) == (True, "numeric value")
    assert answers_equal(read("3"), read("4")) == (False, "wrong answer")


def test_wrong_answer_is_not_a_parse_failure() -> None:
    result = evaluate_output(output("54"), "53")
    assert not result.match and not result.parse_failed
    assert result.predicted == "54" and result.golden == "53" and result.reason == "wrong answer"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("🤔🤔🤔🤔\nthinking forever", "no 🛑 marker"),
        (output(""), "empty answer"),
        (output("(add 1"), "expected ')'"),
        (output("fifty-three!"), "invalid atom"),
        (output("<E999>"), "unknown code"),
    ],
)
def test_parse_failures_are_counted_apart(raw: str, reason: str) -> None:
    result = evaluate_output(raw, "53", codebook=CODEBOOK)
    assert result.parse_failed and not result.match
    assert reason in result.reason


def test_split_output_takes_the_last_stop_run() -> None:
    assert split_output("🤔🤔\n(ans 2)\n🛑🛑🛑🛑\n2") == ("(ans 2)", "2")


def test_encoded_reasoning_is_decoded_and_checked() -> None:
    problem = next(generate("word", count=1, difficulty=3, seed=4))
    raw = problem.render(Mode.ENCODED, CODEBOOK)["messages"][1]["content"]
    result = evaluate_output(raw, problem.golden_text, codebook=CODEBOOK)
    assert result.match and result.reasoning_parsed is True
    broken = evaluate_output(output("1", "<E999>"), "1", codebook=CODEBOOK)
    assert broken.match and broken.reasoning_parsed is False
    english = evaluate_output(output("1", "First, one."), "1")
    assert english.reasoning_parsed is None


@pytest.mark.parametrize("mode", [Mode.ENGLISH, Mode.CANONICAL, Mode.ENCODED])
def test_every_rendering_of_every_domain_evaluates_as_correct(mode: Mode) -> None:
    for domain in ("arithmetic", "word", "syllogism", "selfcorrect"):
        for problem in generate(domain, count=5, difficulty=3, seed=2):
            content = problem.render(mode, CODEBOOK)["messages"][1]["content"]
            result = evaluate_output(content, problem.golden, codebook=CODEBOOK)
            assert result.match, (domain, result)


def test_aggregate_per_pattern_for_a_heatmap() -> None:
    rows = [
        ("arithmetic", 1, evaluate_output(output("2"), "2")),
        ("arithmetic", 1, evaluate_output(output("3"), "2")),
        ("arithmetic", 2, evaluate_output("no markers", "2")),
        ("syllogism", 1, evaluate_output(output("valid"), "valid")),
    ]
    board = aggregate(rows)
    heat = board.heatmap()
    assert heat["domains"] == ["arithmetic", "syllogism"]
    assert heat["difficulties"] == [1, 2]
    assert heat["accuracy"] == [[0.5, 0.0], [1.0, None]]
    cell = board.cells[("arithmetic", 2)]
    assert (cell.total, cell.correct, cell.wrong, cell.parse_failed) == (1, 0, 0, 1)
    assert heat["total"] == {
        "total": 4,
        "correct": 2,
        "wrong": 1,
        "parse_failed": 1,
        "accuracy": 0.5,
    }


def test_parse_answer_decodes_codes() -> None:
    encoded = CODEBOOK.encode("(ans 5)")
    assert parse_answer(encoded, CODEBOOK) == read("(ans 5)")
