"""Word-problem domain: a story of several operations on one quantity, solved step by step."""

from __future__ import annotations

import random
from collections.abc import Callable
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


def _apply(op: tuple[str, tuple[int, ...]], value: int) -> int:
    kind, args = op
    if kind == "gain":
        return value + args[0]
    if kind == "lose":
        return value - args[0]
    if kind == "times":
        return value * args[0]
    if kind == "share":
        return value // args[0]
    return value + args[0] * args[1]


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


def _sayer(template: str, **values: object) -> Callable[[Fraction], str]:
    """An English step sentence with its result filled in later (it may be a wrong value)."""
    return lambda v: template.format(v=fmt(v), **values)


def _steps(
    kind: str, args: tuple[int, ...], current: Expr, value: int, name: str, item: str, count: int
) -> tuple[list[Step], int]:
    var = f"v{count + 1}"
    common = {"name": name, "item": item, "value": value, "k": args[0]}
    if kind == "gain":
        new = value + args[0]
        say = _sayer(
            "{name} gets {k} more {item}, so we add them: "
            "{name} now has {value} + {k} = {v} {item}.",
            **common,
        )
        return [Step(var, (Sym("add"), current, args[0]), Fraction(new), say)], new
    if kind == "lose":
        new = value - args[0]
        say = _sayer(
            "{name} gives away {k} {item}, so we subtract: {value} - {k} = {v} {item} are left.",
            **common,
        )
        return [Step(var, (Sym("sub"), current, args[0]), Fraction(new), say)], new
    if kind == "times":
        new = value * args[0]
        word = "doubles" if args[0] == 2 else "triples"
        say = _sayer(
            "The number of {item} {word}, so we multiply by {k}: "
            "{name} has {value} × {k} = {v} {item}.",
            word=word,
            **common,
        )
        return [Step(var, (Sym("mul"), current, args[0]), Fraction(new), say)], new
    if kind == "share":
        new = value // args[0]
        say = _sayer(
            "{name} splits the {value} {item} into {k} equal piles and keeps one pile, so we "
            "divide: each pile has {value} ÷ {k} = {v} {item}.",
            **common,
        )
        return [Step(var, (Sym("div"), current, args[0]), Fraction(new), say)], new
    packs, each = args
    bought = packs * each
    first = Step(
        var,
        (Sym("mul"), packs, each),
        Fraction(bought),
        _sayer(
            "{name} buys {packs} packs of {each} {item}, so we multiply to find how many "
            "{item} that is: {packs} × {each} = {v} {item}.",
            packs=packs,
            each=each,
            **common,
        ),
    )
    new = value + bought
    second = Step(
        f"v{count + 2}",
        (Sym("add"), current, Sym(var)),
        Fraction(new),
        _sayer(
            "Then we add them to the {value} {item} {name} already had: "
            "{value} + {bought} = {v} {item}.",
            bought=bought,
            **common,
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
        value = _apply(op, value)
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
    actions: list[Expr] = [(Sym(k), *a) for k, a in ops]
    spec: Expr = (Sym("word"), start, *actions)
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
