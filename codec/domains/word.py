"""Word-problem domain: a story of several operations on one quantity, solved step by step."""

from __future__ import annotations

import random
from fractions import Fraction

from codec.domains.base import Domain, Step, Worked, fmt, from_worked
from codec.problem import Problem
from codec.sexpr import Expr, Sym

NAMES = ("Mia", "Sam", "Lena", "Omar", "Priya", "Tom", "Ana", "Kai", "Zoe", "Ben", "Ines", "Leo")
ITEMS = (
    "stickers",
    "marbles",
    "apples",
    "cookies",
    "pencils",
    "coins",
    "cards",
    "shells",
    "stamps",
    "beads",
    "books",
    "eggs",
)
FRIENDS = ("a friend", "a neighbour", "a classmate", "a cousin", "a teammate")
KINDS = ("gain", "lose", "groups", "times", "share")


def _operation(rng: random.Random, current: int) -> tuple[str, tuple[int, ...]] | None:
    kind = rng.choice(KINDS)
    if kind == "gain":
        return kind, (rng.randint(2, 30),)
    if kind == "lose":
        return (kind, (rng.randint(1, current - 1),)) if current > 1 else None
    if kind == "groups":
        return kind, (rng.randint(2, 6), rng.randint(2, 12))
    if kind == "times":
        return (kind, (rng.choice((2, 3)),)) if current <= 300 else None
    divisors = [n for n in (2, 3, 4, 5) if current % n == 0 and current > n]
    return (kind, (rng.choice(divisors),)) if divisors else None


def _story(rng: random.Random, kind: str, args: tuple[int, ...], name: str, item: str) -> str:
    if kind == "gain":
        verb = rng.choice(("finds", "is given", "buys"))
        return f"{name} {verb} {args[0]} more {item}."
    if kind == "lose":
        return f"{name} gives {args[0]} {item} to {rng.choice(FRIENDS)}."
    if kind == "groups":
        return f"{name} buys {args[0]} packs with {args[1]} {item} in each pack."
    if kind == "times":
        return f"{name}'s {item} {'double' if args[0] == 2 else 'triple'} in number."
    return f"{name} splits the {item} into {args[0]} equal piles and keeps only one pile."


def _steps(
    kind: str, args: tuple[int, ...], current: Expr, value: int, name: str, item: str, count: int
) -> tuple[list[Step], int]:
    def var() -> str:
        return f"v{count + 1}"

    if kind == "gain":
        new = value + args[0]
        return [
            Step(
                var(),
                (Sym("add"), current, args[0]),
                Fraction(new),
                lambda v: (
                    f"{name} gets {args[0]} more, so {name} now has "
                    f"{value} + {args[0]} = {fmt(v)} {item}."
                ),
            )
        ], new
    if kind == "lose":
        new = value - args[0]
        return [
            Step(
                var(),
                (Sym("sub"), current, args[0]),
                Fraction(new),
                lambda v: f"Giving away {args[0]} leaves {value} - {args[0]} = {fmt(v)} {item}.",
            )
        ], new
    if kind == "times":
        new = value * args[0]
        word = "Doubling" if args[0] == 2 else "Tripling"
        return [
            Step(
                var(),
                (Sym("mul"), current, args[0]),
                Fraction(new),
                lambda v: f"{word} the {item} gives {value} × {args[0]} = {fmt(v)}.",
            )
        ], new
    if kind == "share":
        new = value // args[0]
        return [
            Step(
                var(),
                (Sym("div"), current, args[0]),
                Fraction(new),
                lambda v: (
                    f"Splitting {value} {item} into {args[0]} equal piles gives "
                    f"{value} ÷ {args[0]} = {fmt(v)} in each pile, and {name} keeps "
                    f"one pile."
                ),
            )
        ], new
    packs, each = args
    bought = packs * each
    first = Step(
        var(),
        (Sym("mul"), packs, each),
        Fraction(bought),
        lambda v: f"The {packs} packs hold {packs} × {each} = {fmt(v)} {item}.",
    )
    second_var = f"v{count + 2}"
    new = value + bought
    second = Step(
        second_var,
        (Sym("add"), current, Sym(first.var)),
        Fraction(new),
        lambda v: (
            f"Together with the {value} {item} {name} already had, that makes "
            f"{value} + {bought} = {fmt(v)}."
        ),
    )
    return [first, second], new


def worked(rng: random.Random, difficulty: int) -> Worked:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(5, 60)
    ops: list[tuple[str, tuple[int, ...]]] = []
    value = start
    while len(ops) < difficulty:
        op = _operation(rng, value)
        if op is None:
            continue
        kind, args = op
        value = {
            "gain": lambda: value + args[0],
            "lose": lambda: value - args[0],
            "times": lambda: value * args[0],
            "share": lambda: value // args[0],
            "groups": lambda: value + args[0] * args[1],
        }[kind]()
        ops.append(op)
    story = [f"{name} has {start} {item}."]
    steps: list[Step] = []
    current: Expr = start
    value = start
    for kind, args in ops:
        story.append(_story(rng, kind, args, name, item))
        new_steps, value = _steps(kind, args, current, value, name, item, len(steps))
        steps.extend(new_steps)
        current = Sym(steps[-1].var)
    question = " ".join(story) + f" How many {item} does {name} have now?"
    spec: Expr = (Sym("word"), start, *((Sym(k), *a) for k, a in ops))
    return Worked(
        question=question,
        spec=spec,
        intro=f"{name} starts with {start} {item}.",
        steps=tuple(steps),
        outro=f"So {name} has {value} {item} now.",
        answer=Fraction(value),
    )


def make(rng: random.Random, difficulty: int) -> Problem:
    return from_worked("word", difficulty, worked(rng, difficulty))


DOMAIN = Domain(
    name="word",
    levels=(1, 2, 3, 4, 5),
    make=make,
    description="multi-step word problems on one quantity (difficulty = number of operations)",
)
