"""Domain generators: reproducible, verified golden answers, a disjoint held-out split."""

from __future__ import annotations

from fractions import Fraction
from itertools import islice

import pytest

from codec.domains import DOMAINS, generate, sample_corpus
from codec.domains.venn import LETTER_OF_KIND, Form, is_valid
from codec.errors import DomainError
from codec.operators import numeric_value
from codec.problem import Problem
from codec.sexpr import Expr, Sym, to_text


def _name(expr: Expr) -> str:
    assert isinstance(expr, Sym)
    return expr.name


def replay(problem: Problem) -> Expr:
    """Execute the canonical reasoning: every let value, check and revision must hold."""
    env: dict[str, Fraction] = {}
    wrong: set[str] = set()
    answer: Expr = Sym("none")
    for step in problem.steps:
        assert isinstance(step, tuple)
        head = _name(step[0])
        if head == "let":
            value = numeric_value(step[2], env)
            stated = numeric_value(step[3], env)
            assert value is not None and stated is not None
            if value != stated:
                wrong.add(_name(step[1]))
            env[_name(step[1])] = stated
        elif head == "check":
            assert numeric_value(step[2], env) == numeric_value(step[3])
        elif head == "revise":
            wrong.discard(_name(step[1]))
            value = numeric_value(step[2])
            assert value is not None
            env[_name(step[1])] = value
        elif head == "ans":
            answer = step[1]
    assert not wrong, f"a wrong step was never revised in {problem.canonical_reasoning}"
    return answer


def apply(kind: str, args: list[int], quantity: int) -> int:
    if kind == "gain":
        return quantity + args[0]
    if kind == "lose":
        return quantity - args[0]
    if kind == "times":
        return quantity * args[0]
    if kind == "share":
        return quantity // args[0]
    assert kind == "groups"
    return quantity + args[0] * args[1]


def golden_from_spec(problem: Problem) -> Expr:
    """The answer computed from the problem statement alone, independently of the steps."""
    spec = problem.spec
    assert isinstance(spec, tuple)
    head = _name(spec[0])
    if head == "fix":
        inner = spec[1]
        assert isinstance(inner, tuple)
        spec, head = inner, _name(inner[0])
    if head == "calc":
        value = numeric_value(spec[1])
        assert value is not None
        return int(value) if value.denominator == 1 else value
    if head == "word":
        quantity = spec[1]
        assert isinstance(quantity, int)
        for action in spec[2:]:
            assert isinstance(action, tuple)
            kind, args = _name(action[0]), [a for a in action[1:] if isinstance(a, int)]
            quantity = apply(kind, args, quantity)
        return quantity
    assert head == "syl"
    major, minor, conclusion = spec[1], spec[2], spec[3]
    assert isinstance(major, tuple) and isinstance(minor, tuple) and isinstance(conclusion, tuple)
    # the middle term is the one both premises share; no/some are symmetric, so their
    # canonical argument order may differ from the question's, which leaves validity unchanged
    major_terms, minor_terms = {_name(t) for t in major[1:]}, {_name(t) for t in minor[1:]}
    (m,) = major_terms & minor_terms
    figure = {(0, 1): 1, (1, 1): 2, (0, 0): 3, (1, 0): 4}[
        (0 if _name(major[1]) == m else 1, 1 if _name(minor[2]) == m else 0)
    ]
    mood = "".join(LETTER_OF_KIND[_name(x[0])] for x in (major, minor, conclusion))
    return Sym("valid" if is_valid(Form(mood, figure), len(spec) == 5) else "invalid")


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_golden_answers_are_verified(domain: str) -> None:
    for level in DOMAINS[domain].levels:
        for problem in generate(domain, count=25, difficulty=level, seed=7):
            assert problem.golden == replay(problem)
            assert problem.golden == golden_from_spec(problem), problem.question


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_seeded_and_reproducible(domain: str) -> None:
    def run(seed: int) -> list[str]:
        return [p.id + p.english for p in generate(domain, count=20, difficulty=2, seed=seed)]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_heldout_never_overlaps_training(domain: str) -> None:
    level = DOMAINS[domain].levels[0]  # the smallest problem space collides most
    # unique=False: draw more than the level holds, so collisions would surely show.
    train = {
        to_text(p.spec) for p in generate(domain, count=800, difficulty=level, seed=0, unique=False)
    }
    heldout = [
        p
        for p in generate(
            domain, count=100, difficulty=level, seed=0, split="heldout", unique=False
        )
    ]
    assert all(p.split == "heldout" for p in heldout)
    assert train.isdisjoint(to_text(p.spec) for p in heldout)


def test_bad_options_are_explained() -> None:
    with pytest.raises(DomainError, match="unknown domain 'poetry'"):
        next(generate("poetry", count=1, difficulty=1, seed=0))
    with pytest.raises(DomainError, match="difficulty 9 is not a level"):
        next(generate("word", count=1, difficulty=9, seed=0))


def test_english_reads_naturally() -> None:
    for domain in DOMAINS:
        for problem in generate(domain, count=10, difficulty=3, seed=5):
            text = problem.english
            assert text.endswith(".") and "  " not in text
            assert "{" not in text and "(let" not in text and "<E" not in text


def test_sample_corpus_is_deterministic_and_covers_everything() -> None:
    first = list(sample_corpus(120, seed=3))
    assert first == list(sample_corpus(120, seed=3))
    assert len(first) == 120 and first != list(sample_corpus(120, seed=4))
    joined = "\n".join(first)
    for needle in ("🤔🤔🤔🤔\n", "🛑🛑", "<E", "(let", "Premise 1:", "Let me check", "Calculate"):
        assert needle in joined
    assert len(list(islice(sample_corpus(10), 3))) == 3


def test_no_problem_repeats_within_a_run_even_on_a_small_level() -> None:
    # Level 1 has about 380 distinct training problems; without the check ~40% repeat.
    problems = list(generate("arithmetic", count=350, difficulty=1, seed=1))
    assert len({p.id for p in problems}) == 350


def test_a_level_that_runs_out_of_problems_says_so() -> None:
    with pytest.raises(DomainError, match=r"after 3\d\d of the 400 asked for; this level has run"):
        list(generate("arithmetic", count=400, difficulty=1, seed=1))


def test_mixed_problems_go_on_when_a_small_level_runs_out() -> None:
    from codec.domains import mixed_problems

    # 2,000 held-out problems need ~100 a level; arithmetic level 1 has only ~40.
    problems = list(mixed_problems(2000, seed=0, split="heldout"))
    assert len(problems) == 2000 and len({p.id for p in problems}) == 2000
