"""Hypothesis strategies for random expressions over the closed operator set."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import strategies as st

from codec.operators import OPERATORS
from codec.sexpr import Expr, Str, Sym

# problem statements (calc, word, syl, fix) and let are left out of the random operators:
# let gets its own strategy so that its first argument is always a variable
RANDOM_OPS = sorted(name for name in OPERATORS if name not in ("let", "calc", "word", "syl", "fix"))

numbers = st.one_of(
    st.integers(-50, 50),
    st.builds(Fraction, st.integers(-20, 20), st.integers(1, 12)).map(
        lambda f: int(f) if f.denominator == 1 else f
    ),
)
variables = st.integers(1, 6).map(lambda n: Sym(f"v{n}"))
constants = st.sampled_from([Sym("valid"), Sym("invalid"), Sym("dogs"), Sym("cats"), Sym("x")])
strings = st.text(alphabet='ab c"\\', max_size=5).map(Str)
atoms: st.SearchStrategy[Expr] = st.one_of(numbers, variables, constants, strings)


def _lists(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    def with_op(name: str) -> st.SearchStrategy[Expr]:
        op = OPERATORS[name]
        high = op.max_args if op.max_args is not None else op.min_args + 3
        return st.lists(children, min_size=op.min_args, max_size=high).map(
            lambda args: (Sym(name), *args)
        )

    let = st.tuples(variables, children, st.lists(numbers, max_size=1)).map(
        lambda t: (Sym("let"), t[0], t[1], *t[2])
    )
    return st.one_of(st.sampled_from(RANDOM_OPS).flatmap(with_op), let)


expressions: st.SearchStrategy[Expr] = st.recursive(atoms, _lists, max_leaves=12)
steps = st.lists(expressions, min_size=1, max_size=4)
