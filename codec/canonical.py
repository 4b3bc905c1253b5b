"""Canonicalization: one printed form for every expression with the same meaning.

"Same meaning" is the equational theory the codec normalizes, stated here so the property
tests can check exactly it:

- associativity: nested `add`/`mul`/`and`/`or` are flattened;
- commutativity: arguments of commutative operators (see `codec.operators`) are sorted
  (numbers by value, then variables by index, then symbols, strings, and lists);
- subtraction and division: `(sub a b)` is `(add a (neg b))`, `(div a b)` is
  `(mul a (inv b))`; `neg`/`inv` distribute over `add`/`mul`, cancel in pairs, and fold into
  literals (`(neg 3)` is `-3`, `(inv 4)` is `1/4`);
- exact rationals: `2/4`, `0.5` and `1/2` are the same literal; floats never appear;
- variables (symbols bound by `let`, and any symbol spelled `v` + digits) are renamed
  `v1, v2, …` in order of first use.

Arithmetic is not evaluated: `(mul 5 12)` stays a product, because a reasoning step must
show its computation. Numeric equality of answers is the evaluator's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from codec.errors import CanonicalError
from codec.operators import OPERATORS
from codec.sexpr import Expr, Str, Sym, number, read_all, to_text, to_text_all

_VARIABLE = re.compile(r"v(\d+)")
_SEQ = Sym("seq")


def validate(expr: Expr, path: str = "expr") -> None:
    """Raise CanonicalError when a list's head is not a known operator or its arity is wrong."""
    if not isinstance(expr, tuple):
        return
    if not expr or not isinstance(expr[0], Sym):
        raise CanonicalError(
            "a list must start with an operator symbol; see codec.operators for the set",
            path=path,
        )
    name = expr[0].name
    op = OPERATORS.get(name)
    if op is None:
        raise CanonicalError(
            f"unknown operator {name!r}; use one of the operators in codec.operators",
            path=path,
        )
    count = len(expr) - 1
    if count < op.min_args or (op.max_args is not None and count > op.max_args):
        most = "any number" if op.max_args is None else str(op.max_args)
        raise CanonicalError(
            f"operator {name!r} takes {op.min_args} to {most} arguments, got {count}", path=path
        )
    if name == "let" and not isinstance(expr[1], Sym):
        raise CanonicalError("(let NAME EXPR [VALUE]) needs a symbol as NAME", path=path)
    for index, child in enumerate(expr[1:], start=1):
        validate(child, f"{path}[{index}]")


def _normalize(expr: Expr) -> Expr:
    """Bottom-up rewrite: sub/div, neg/inv, literals and flattening (no sorting)."""
    if not isinstance(expr, tuple):
        return number(expr) if isinstance(expr, int | Fraction) else expr
    head = expr[0]
    assert isinstance(head, Sym)
    name = head.name
    args = [_normalize(a) for a in expr[1:]]
    if name == "sub":
        return _normalize((Sym("add"), args[0], (Sym("neg"), args[1])))
    if name == "div":
        return _normalize((Sym("mul"), args[0], (Sym("inv"), args[1])))
    if name in ("neg", "inv"):
        return _negate_or_invert(name, args[0])
    op = OPERATORS[name]
    if op.associative:
        flat: list[Expr] = []
        for a in args:
            if isinstance(a, tuple) and a and a[0] == head:
                flat.extend(a[1:])
            else:
                flat.append(a)
        args = flat
    return (head, *args)


def _negate_or_invert(name: str, arg: Expr) -> Expr:
    over = "add" if name == "neg" else "mul"
    if isinstance(arg, int | Fraction) and not isinstance(arg, bool):
        if name == "neg":
            return number(-Fraction(arg))
        if arg != 0:
            return number(1 / Fraction(arg))
    if isinstance(arg, tuple) and arg and isinstance(arg[0], Sym):
        if arg[0].name == name:
            return arg[1]
        if arg[0].name == over:
            return (Sym(over), *(_negate_or_invert(name, a) for a in arg[1:]))
    return (Sym(name), arg)


Colors = dict[str, int] | None  # variable -> refined color for the name-blind order; None: names


def _key(expr: Expr, colors: Colors) -> tuple[Any, ...]:
    if isinstance(expr, int | Fraction):
        return (0, Fraction(expr), "")
    if isinstance(expr, Sym):
        match = _VARIABLE.fullmatch(expr.name)
        if match:
            return (1, int(match.group(1)) if colors is None else colors.get(expr.name, 0), "")
        if colors is not None and expr.name in colors:
            return (1, colors[expr.name], "")
        return (2, 0, expr.name)
    if isinstance(expr, Str):
        return (3, 0, expr.value)
    return (4, len(expr), "", *(_key(e, colors) for e in expr))


def _sort(expr: Expr, colors: Colors) -> Expr:
    if not isinstance(expr, tuple):
        return expr
    head = expr[0]
    args = [_sort(a, colors) for a in expr[1:]]
    assert isinstance(head, Sym)
    if OPERATORS[head.name].commutative:
        args.sort(key=lambda e: _key(e, colors))
    return (head, *args)


def _occurrences(
    expr: Expr,
    path: tuple[tuple[Any, ...], ...],
    colors: dict[str, int],
    contexts: dict[str, list[tuple[Any, ...]]],
) -> None:
    """Record where each variable occurs: every list above it and its place in each (no place
    inside a commutative list), all written with name-blind keys."""
    if not isinstance(expr, tuple):
        return
    head = expr[0]
    assert isinstance(head, Sym)
    key = _key(expr, colors)
    commutative = OPERATORS[head.name].commutative
    for index, child in enumerate(expr[1:], start=1):
        where = (*path, (0 if commutative else index, key))
        if isinstance(child, Sym) and child.name in contexts:
            contexts[child.name].append(where)
        _occurrences(child, where, colors, contexts)


def _colors(tree: Expr, variables: set[str], rounds: int = 3) -> dict[str, int]:
    """Name-blind colors for variables (color refinement): a variable is known by the places
    it occurs in, so the order of commutative arguments does not depend on the names."""
    colors = dict.fromkeys(variables, 0)
    for _ in range(rounds):
        contexts: dict[str, list[tuple[Any, ...]]] = {v: [] for v in variables}
        # sorted first, so a list's key does not depend on the input order
        _occurrences(_sort(tree, colors), (), colors, contexts)
        signatures = {v: tuple(sorted(contexts[v])) for v in variables}
        ranks = {sig: rank for rank, sig in enumerate(sorted(set(signatures.values())))}
        refined = {v: ranks[signatures[v]] for v in variables}
        if refined == colors:
            break
        colors = refined
    return colors


def _variables(expr: Expr, found: set[str]) -> None:
    if isinstance(expr, tuple):
        if expr and expr[0] == Sym("let") and isinstance(expr[1], Sym):
            found.add(expr[1].name)
        for e in expr:
            _variables(e, found)
    elif isinstance(expr, Sym) and _VARIABLE.fullmatch(expr.name):
        found.add(expr.name)


def _first_use(expr: Expr, variables: set[str], order: dict[str, str]) -> None:
    if isinstance(expr, tuple):
        for e in expr[1:]:
            _first_use(e, variables, order)
    elif isinstance(expr, Sym) and expr.name in variables and expr.name not in order:
        order[expr.name] = f"v{len(order) + 1}"


def _rename(expr: Expr, mapping: dict[str, str]) -> Expr:
    if isinstance(expr, tuple):
        return tuple(_rename(e, mapping) for e in expr)
    if isinstance(expr, Sym) and expr.name in mapping:
        return Sym(mapping[expr.name])
    return expr


def _canonical_tree(expr: Expr) -> Expr:
    validate(expr)
    tree = _normalize(expr)
    variables: set[str] = set()
    _variables(tree, variables)
    if not variables:
        return _sort(tree, None)
    tree = _sort(tree, _colors(tree, variables))
    for _ in range(8):
        order: dict[str, str] = {}
        _first_use(tree, variables, order)
        renamed = _sort(_rename(tree, order), None)
        variables = set(order.values())
        if renamed == tree:
            break
        tree = renamed
    return tree


def canonical(expr: Expr) -> Expr:
    """The canonical form of one expression."""
    return _canonical_tree(expr)


def canonical_steps(steps: Sequence[Expr]) -> tuple[Expr, ...]:
    """Canonicalize a sequence of top-level steps; variables are renamed across all of them."""
    tree = _canonical_tree((_SEQ, *steps))
    assert isinstance(tree, tuple)
    return tree[1:]


def canonical_text(text: str) -> str:
    """Read text (one or more top-level expressions) and print its canonical form."""
    exprs = read_all(text)
    if len(exprs) == 1:
        return to_text(canonical(exprs[0]))
    return to_text_all(canonical_steps(exprs))


def print_steps(steps: Iterable[Expr]) -> str:
    """Print already-canonical steps, one per line."""
    return to_text_all(steps)
