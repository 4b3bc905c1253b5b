"""Canonicalization: idempotent, and equal meanings print identically."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.canonical import canonical, canonical_steps, canonical_text
from codec.errors import CanonicalError
from codec.operators import OPERATORS
from codec.sexpr import Expr, Str, Sym, format_atom, read, to_text
from tests.codec.strategies import expressions, steps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(sub 60 7)", "(add -7 60)"),
        ("(add (add 1 x) (add 2 y))", "(add 1 2 x y)"),
        ("(div a 4)", "(mul 1/4 a)"),
        ("(div a (mul b c))", "(mul a (inv b) (inv c))"),
        ("(sub a (add b c))", "(add a (neg b) (neg c))"),
        ("(neg (neg x))", "x"),
        ("(add 0.5 2/4)", "(add 1/2 1/2)"),
        ("(no dogs cats)", "(no cats dogs)"),
        ("(all dogs cats)", "(all dogs cats)"),
        (
            "(let total (mul 5 12) 60) (let left (sub total 7) 53) (ans left)",
            "(let v1 (mul 5 12) 60)\n(let v2 (add -7 v1) 53)\n(ans v2)",
        ),
    ],
)
def test_normal_forms(text: str, expected: str) -> None:
    assert canonical_text(text) == expected


def test_arithmetic_is_not_evaluated() -> None:
    assert canonical_text("(let v1 (mul 5 12) 60)") == "(let v1 (mul 5 12) 60)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(frobnicate 1 2)", "unknown operator 'frobnicate'"),
        ("(add 1)", "takes 2 to any number arguments, got 1"),
        ("(neg 1 2)", "takes 1 to 1 arguments, got 2"),
        ("(ans (1 2))", "must start with an operator"),
        ("(let 3 4)", "needs a symbol"),
    ],
)
def test_closed_operator_set(text: str, message: str) -> None:
    with pytest.raises(CanonicalError) as info:
        canonical(read(text))
    assert message in str(info.value)
    assert "at expr" in str(info.value)


@settings(max_examples=120, deadline=None)
@given(expressions)
def test_idempotent(expr: Expr) -> None:
    once = canonical(expr)
    assert canonical(once) == once


@settings(max_examples=100, deadline=None)
@given(steps)
def test_idempotent_over_step_sequences(exprs: list[Expr]) -> None:
    once = canonical_steps(exprs)
    assert canonical_steps(once) == once


def _variant(expr: Expr, rng: random.Random) -> Expr:
    """The same meaning written differently: permuted, regrouped, sub/div, neg/inv spelled out."""
    if not isinstance(expr, tuple):
        if isinstance(expr, int | Fraction) and rng.random() < 0.3:
            return (Sym("neg"), (Sym("neg"), expr))
        return expr
    head = expr[0]
    assert isinstance(head, Sym)
    args = [_variant(a, rng) for a in expr[1:]]
    op = OPERATORS[head.name]
    if op.commutative:
        rng.shuffle(args)
    if op.associative and len(args) > 2 and rng.random() < 0.5:
        cut = rng.randint(1, len(args) - 1)
        left = args[:cut] if cut > 1 else args[:1]
        right = args[cut:]
        args = [
            (head, *left) if len(left) > 1 else left[0],
            (head, *right) if len(right) > 1 else right[0],
        ]
    if head.name in ("add", "mul") and len(args) == 2:
        inverse = "neg" if head.name == "add" else "inv"
        b = args[1]
        if isinstance(b, tuple) and b and b[0] == Sym(inverse):
            return (Sym("sub" if head.name == "add" else "div"), args[0], b[1])
    return (head, *args)


def _spelled(expr: Expr, rng: random.Random) -> str:
    """Print with literals spelled differently: 2/4 for 1/2, 0.5, 6/3 for 2."""
    if isinstance(expr, tuple):
        return "(" + " ".join(_spelled(e, rng) for e in expr) + ")"
    if isinstance(expr, int | Fraction) and not isinstance(expr, bool):
        value = Fraction(expr)
        k = rng.randint(1, 4)
        if rng.random() < 0.5:
            return f"{value.numerator * k}/{value.denominator * k}"
        return format_atom(expr)
    return format_atom(expr)


def _renamed(expr: Expr, mapping: dict[str, str]) -> Expr:
    if isinstance(expr, tuple):
        return tuple(_renamed(e, mapping) for e in expr)
    if isinstance(expr, Sym) and expr.name in mapping:
        return Sym(mapping[expr.name])
    return expr


@settings(max_examples=120, deadline=None)
@given(expressions, st.integers(0, 2**32))
def test_equal_meaning_prints_identically(expr: Expr, seed: int) -> None:
    rng = random.Random(seed)
    names = [f"v{i}" for i in range(1, 7)]
    shuffled = names[:]
    rng.shuffle(shuffled)
    variant = _renamed(_variant(expr, rng), dict(zip(names, shuffled, strict=True)))
    assert canonical_text(_spelled(variant, rng)) == to_text(canonical(expr))


def test_renaming_follows_first_use() -> None:
    assert canonical_text("(let b 1) (let a (add b 2)) (ans a)") == canonical_text(
        "(let x 1) (let y (add x 2)) (ans y)"
    )
    assert canonical_text('(note "v9 stays")') == '(note "v9 stays")'
    assert canonical(Str("v1")) == Str("v1")
