"""What every domain generator shares: reasoning steps, problem assembly, the Domain record."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from codec.canonical import canonical, canonical_steps
from codec.problem import Problem
from codec.sexpr import Expr, Sym, number


@dataclass(frozen=True)
class Step:
    """One computed step: `(let vN EXPR VALUE)`, and how to say it in English for a value."""

    var: str
    expr: Expr
    value: Fraction
    say: Callable[[Fraction], str]

    def let(self, value: Fraction | None = None) -> Expr:
        return (
            Sym("let"),
            Sym(self.var),
            self.expr,
            number(self.value if value is None else value),
        )


@dataclass(frozen=True)
class Worked:
    """A problem before canonicalization: its steps with English, ready to be assembled."""

    question: str
    spec: Expr
    intro: str
    steps: tuple[Step, ...]
    outro: str
    answer: Fraction


def fmt(value: Fraction | int) -> str:
    """A number as English text writes it: 7, -3, 3/4."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def assemble(
    domain: str,
    difficulty: int,
    question: str,
    spec: Expr,
    raw_steps: list[Expr],
    english: list[str],
    golden: Expr,
) -> Problem:
    """Canonicalize the pieces into a Problem; the English is joined into one paragraph."""
    steps = canonical_steps([*raw_steps, (Sym("ans"), golden)])
    return Problem(
        domain=domain,
        difficulty=difficulty,
        question=question,
        spec=canonical(spec),
        steps=steps,
        english=" ".join(s for s in english if s),
        golden=canonical(golden),
    )


def from_worked(domain: str, difficulty: int, worked: Worked) -> Problem:
    return assemble(
        domain,
        difficulty,
        worked.question,
        worked.spec,
        [s.let() for s in worked.steps],
        [worked.intro, *(s.say(s.value) for s in worked.steps), worked.outro],
        number(worked.answer),
    )


@dataclass(frozen=True)
class Domain:
    """A built-in domain: a seeded generator with difficulty levels."""

    name: str
    levels: tuple[int, ...]
    make: Callable[[random.Random, int], Problem]
    description: str
