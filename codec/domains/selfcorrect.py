"""Self-correction domain: a wrong step, a check that finds it, the revision, then the rest."""

from __future__ import annotations

import random
from fractions import Fraction

from codec.domains import arithmetic, word
from codec.domains.base import Domain, Worked, assemble, fmt
from codec.problem import Problem
from codec.sexpr import Expr, Sym, number

SYMBOL = {"add": "+", "mul": "×", "sub": "-", "div": "÷"}


def wrong_value(rng: random.Random, right: Fraction) -> Fraction:
    """A plausible slip: off by a little, or off by ten."""
    while True:
        if right.denominator == 1:
            slip = Fraction(rng.choice((-10, -2, -1, 1, 2, 10)))
        else:
            slip = Fraction(rng.choice((-1, 1)), max(right.denominator, 2))
        wrong = right + slip
        if wrong != right and (wrong >= 0 or right < 0):
            return wrong


def describe(expr: Expr, values: dict[str, Fraction]) -> str:
    """The operation of a step in words, with variables replaced by their values."""
    assert isinstance(expr, tuple) and isinstance(expr[0], Sym)

    def operand(e: Expr) -> str:
        if isinstance(e, Sym):
            return fmt(values[e.name])
        assert isinstance(e, int | Fraction)
        return fmt(e)

    return f" {SYMBOL[expr[0].name]} ".join(operand(e) for e in expr[1:])


def with_error(worked: Worked, rng: random.Random, difficulty: int) -> Problem:
    index = rng.randrange(len(worked.steps))
    values = {s.var: s.value for s in worked.steps}
    raw: list[Expr] = []
    english = [worked.intro]
    for i, step in enumerate(worked.steps):
        if i != index:
            raw.append(step.let())
            english.append(step.say(step.value))
            continue
        wrong = wrong_value(rng, step.value)
        shown = describe(step.expr, values)
        raw += [
            step.let(wrong),
            (Sym("check"), Sym(step.var), step.expr, number(step.value)),
            (Sym("revise"), Sym(step.var), number(step.value)),
        ]
        english += [
            step.say(wrong),
            f"Let me check that step: {shown} is {fmt(step.value)}, not {fmt(wrong)}.",
            f"I made a mistake there, so I correct it: {shown} = {fmt(step.value)}.",
        ]
    english.append(worked.outro)
    return assemble(
        "selfcorrect",
        difficulty,
        worked.question,
        (Sym("fix"), worked.spec),
        raw,
        english,
        number(worked.answer),
    )


def make(rng: random.Random, difficulty: int) -> Problem:
    if rng.random() < 0.5:
        base = arithmetic.worked(arithmetic.sample_tree(rng, difficulty))
    else:
        base = word.worked(rng, difficulty)
    return with_error(base, rng, difficulty)


DOMAIN = Domain(
    name="selfcorrect",
    levels=(1, 2, 3, 4, 5),
    make=make,
    description="a worked problem with one wrong step, its check and its revision",
)
