"""Arithmetic domain: evaluate an expression step by step, one operation per step."""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from codec.domains.base import Domain, Step, Worked, fmt, from_worked
from codec.problem import Problem
from codec.sexpr import Expr, Sym, number

SYMBOL = {"add": "+", "sub": "-", "mul": "×", "div": "÷"}
VERB = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide"}
PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2}
# difficulty -> (operations, operators, largest literal, fractions allowed)
LEVELS: dict[int, tuple[int, tuple[str, ...], int, bool]] = {
    1: (1, ("add", "sub"), 20, False),
    2: (2, ("add", "sub", "mul"), 20, False),
    3: (3, ("add", "sub", "mul"), 30, False),
    4: (4, ("add", "sub", "mul", "div"), 40, False),
    5: (4, ("add", "sub", "mul", "div"), 12, True),
}


@dataclass(frozen=True)
class Node:
    op: str
    left: Tree
    right: Tree


Tree = Node | Fraction


def value_of(tree: Tree) -> Fraction | None:
    if isinstance(tree, Fraction):
        return tree
    a, b = value_of(tree.left), value_of(tree.right)
    if a is None or b is None:
        return None
    if tree.op == "add":
        return a + b
    if tree.op == "sub":
        return a - b
    if tree.op == "mul":
        return a * b
    return None if b == 0 else a / b


def infix(tree: Tree, parent: int = 0, right: bool = False) -> str:
    if isinstance(tree, Fraction):
        return fmt(tree)
    prec = PRECEDENCE[tree.op]
    text = f"{infix(tree.left, prec)} {SYMBOL[tree.op]} {infix(tree.right, prec, True)}"
    return f"({text})" if prec < parent or (right and prec == parent) else text


def random_tree(
    rng: random.Random, ops: int, choices: tuple[str, ...], top: int, frac: bool
) -> Tree:
    if ops == 0:
        if frac and rng.random() < 0.5:
            return Fraction(rng.randint(1, top), rng.randint(2, 9))
        return Fraction(rng.randint(1, top))
    left_ops = rng.randint(0, ops - 1)
    return Node(
        rng.choice(choices),
        random_tree(rng, left_ops, choices, top, frac),
        random_tree(rng, ops - 1 - left_ops, choices, top, frac),
    )


def acceptable(tree: Tree, frac: bool) -> bool:
    value = value_of(tree)
    if value is None or abs(value) > 2000 or (not frac and value.denominator != 1):
        return False
    if value < 0 and not frac:
        return False
    return isinstance(tree, Fraction) or (
        acceptable(tree.left, frac) and acceptable(tree.right, frac)
    )


def to_spec(tree: Tree) -> Expr:
    if isinstance(tree, Fraction):
        return number(tree)
    return (Sym(tree.op), to_spec(tree.left), to_spec(tree.right))


ORDINALS = ("First", "Next", "Then", "After that", "Then", "Next")


def steps_of(tree: Tree) -> tuple[list[Step], Expr]:
    """Post-order steps; returns the steps and the operand naming the whole tree's value."""
    steps: list[Step] = []

    def walk(node: Tree, parent: str | None, is_right: bool) -> tuple[Expr, Fraction]:
        if isinstance(node, Fraction):
            return number(node), node
        left, lv = walk(node.left, node.op, False)
        right, rv = walk(node.right, node.op, True)
        prec = PRECEDENCE[node.op]
        outer = PRECEDENCE[parent] if parent is not None else 0
        in_parens = prec < outer or (is_right and prec == outer)
        value = value_of(node)
        assert value is not None
        var = f"v{len(steps) + 1}"
        index = len(steps)
        reason = ""
        if parent is not None and prec > outer:
            reason = " because multiplication and division come before addition and subtraction"
        elif in_parens:
            reason = " because it is inside parentheses"
        sym, a, b = SYMBOL[node.op], fmt(lv), fmt(rv)

        def say(
            v: Fraction,
            sym: str = sym,
            a: str = a,
            b: str = b,
            reason: str = reason,
            index: int = index,
        ) -> str:
            lead = ORDINALS[index % len(ORDINALS)]
            return f"{lead}, we work out {a} {sym} {b}{reason}, which gives {fmt(v)}."

        steps.append(Step(var, (Sym(node.op), left, right), value, say))
        return Sym(var), value

    walk(tree, None, False)
    return steps, Sym(steps[-1].var)


def worked(tree: Tree) -> Worked:
    steps, _ = steps_of(tree)
    answer = value_of(tree)
    assert answer is not None
    text = infix(tree)
    return Worked(
        question=f"Calculate {text}.",
        spec=(Sym("calc"), to_spec(tree)),
        intro=f"We need to calculate {text}, one operation at a time.",
        steps=tuple(steps),
        outro=f"So the value of {text} is {fmt(answer)}.",
        answer=answer,
    )


def sample_tree(rng: random.Random, difficulty: int) -> Tree:
    ops, choices, top, frac = LEVELS[difficulty]
    while True:
        tree = random_tree(rng, ops, choices, top, frac)
        if acceptable(tree, frac):
            return tree


def make(rng: random.Random, difficulty: int) -> Problem:
    return from_worked("arithmetic", difficulty, worked(sample_tree(rng, difficulty)))


DOMAIN = Domain(
    name="arithmetic",
    levels=tuple(LEVELS),
    make=make,
    description="evaluate +, -, ×, ÷ expressions step by step (level 5: fractions)",
)
