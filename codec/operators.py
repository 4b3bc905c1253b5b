"""The closed operator set of every domain, in one table, and the numeric meaning of arithmetic.

An operator is the head symbol of a list. Canonicalization refuses any other head, so a
domain's vocabulary is exactly what is listed here.

| domain        | operator    | arity | C A | meaning                                              |
|---------------|-------------|-------|-----|------------------------------------------------------|
| arithmetic    | add         | 2+    | C A | sum                                                  |
|               | mul         | 2+    | C A | product                                              |
|               | sub         | 2     |     | a - b, rewritten to (add a (neg b))                  |
|               | div         | 2     |     | a / b, rewritten to (mul a (inv b))                  |
|               | neg         | 1     |     | -a (a literal folds: (neg 3) is -3)                  |
|               | inv         | 1     |     | 1/a (a non-zero literal folds: (inv 4) is 1/4)       |
|               | calc        | 1     |     | problem statement: evaluate this expression          |
| steps         | let         | 2-3   |     | (let vN EXPR VALUE): bind vN to EXPR, which is VALUE |
|               | ans         | 1     |     | the final answer                                     |
|               | word        | 2+    |     | problem statement: a word problem (template, ops)    |
|               | gain/lose   | 1     |     | word-problem operations on the running quantity      |
|               | times/share | 1     |     | multiply / split equally                             |
|               | groups      | 2     |     | gain N groups of M                                   |
| syllogism     | all         | 2     |     | A: all S are P                                       |
|               | no          | 2     | C   | E: no S are P                                        |
|               | some        | 2     | C   | I: some S are P                                      |
|               | some-not    | 2     |     | O: some S are not P                                  |
|               | syl         | 3-4   |     | (syl MAJOR MINOR CONCLUSION [import])                |
|               | mid         | 1     |     | the middle term                                      |
|               | form        | 2     |     | (form MOOD FIGURE), e.g. (form aaa 1)                |
|               | passes      | 0     |     | no syllogistic rule is broken                        |
|               | breaks      | 1     |     | the first rule broken, e.g. undistributed-middle     |
|               | counter     | 0+    |     | a countermodel: the inhabited Venn regions           |
|               | region      | 1+    | C   | one Venn region, named by the terms it lies inside   |
| general       | given       | 1+    |     | a stated fact                                        |
|               | goal        | 1     |     | what is asked                                        |
|               | step        | 1+    |     | a derived fact                                       |
|               | note        | 1     |     | free text (a string)                                 |
|               | seq         | 0+    |     | an ordered sequence of steps                         |
|               | eq          | 2     | C   | equality                                             |
|               | lt, le      | 2     |     | less than, less or equal                             |
|               | and, or     | 2+    | C A | conjunction, disjunction                             |
|               | not         | 1     |     | negation                                             |
| selfcorrect   | check       | 3     |     | (check vN EXPR VALUE): recompute vN, it is VALUE     |
|               | revise      | 2     |     | (revise vN VALUE): replace vN's value                |
|               | fix         | 1     |     | problem statement: the underlying problem            |

C: commutative (arguments sorted), A: associative (nested uses flattened).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from codec.sexpr import Expr, Sym


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    domain: str
    min_args: int
    max_args: int | None  # None: no upper bound
    commutative: bool = False
    associative: bool = False


def _ops(domain: str, *specs: tuple[str, int, int | None, bool, bool]) -> dict[str, Operator]:
    return {name: Operator(name, domain, lo, hi, c, a) for name, lo, hi, c, a in specs}


OPERATORS: dict[str, Operator] = {
    **_ops(
        "arithmetic",
        ("add", 2, None, True, True),
        ("mul", 2, None, True, True),
        ("sub", 2, 2, False, False),
        ("div", 2, 2, False, False),
        ("neg", 1, 1, False, False),
        ("inv", 1, 1, False, False),
        ("calc", 1, 1, False, False),
    ),
    **_ops(
        "steps",
        ("let", 2, 3, False, False),
        ("ans", 1, 1, False, False),
        ("word", 2, None, False, False),
        ("gain", 1, 1, False, False),
        ("lose", 1, 1, False, False),
        ("times", 1, 1, False, False),
        ("share", 1, 1, False, False),
        ("groups", 2, 2, False, False),
    ),
    **_ops(
        "syllogism",
        ("all", 2, 2, False, False),
        ("no", 2, 2, True, False),
        ("some", 2, 2, True, False),
        ("some-not", 2, 2, False, False),
        ("syl", 3, 4, False, False),
        ("mid", 1, 1, False, False),
        ("form", 2, 2, False, False),
        ("passes", 0, 0, False, False),
        ("breaks", 1, 1, False, False),
        ("counter", 0, None, False, False),
        ("region", 1, None, True, False),
    ),
    **_ops(
        "general",
        ("given", 1, None, False, False),
        ("goal", 1, 1, False, False),
        ("step", 1, None, False, False),
        ("note", 1, 1, False, False),
        ("seq", 0, None, False, False),
        ("eq", 2, 2, True, False),
        ("lt", 2, 2, False, False),
        ("le", 2, 2, False, False),
        ("and", 2, None, True, True),
        ("or", 2, None, True, True),
        ("not", 1, 1, False, False),
    ),
    **_ops(
        "selfcorrect",
        ("check", 3, 3, False, False),
        ("revise", 2, 2, False, False),
        ("fix", 1, 1, False, False),
    ),
}

OPERATORS_BY_DOMAIN: dict[str, frozenset[str]] = {
    domain: frozenset(op.name for op in OPERATORS.values() if op.domain == domain)
    for domain in {op.domain for op in OPERATORS.values()}
}

ARITHMETIC = OPERATORS_BY_DOMAIN["arithmetic"] - {"calc"}


def numeric_value(expr: Expr, env: dict[str, Fraction] | None = None) -> Fraction | None:
    """The exact value of an arithmetic expression, or None when it is not one.

    Symbols are looked up in env (e.g. let-bound variables); division by zero gives None.
    """
    if isinstance(expr, bool):
        return None
    if isinstance(expr, int | Fraction):
        return Fraction(expr)
    if isinstance(expr, Sym):
        return None if env is None else env.get(expr.name)
    if not isinstance(expr, tuple) or not expr or not isinstance(expr[0], Sym):
        return None
    head, args = expr[0].name, expr[1:]
    if head not in ARITHMETIC or len(args) < OPERATORS[head].min_args:
        return None
    values = [numeric_value(a, env) for a in args]
    if any(v is None for v in values):
        return None
    vals = [v for v in values if v is not None]
    if head == "add":
        return sum(vals, Fraction(0))
    if head == "mul":
        result = Fraction(1)
        for v in vals:
            result *= v
        return result
    if head == "sub" and len(vals) == 2:
        return vals[0] - vals[1]
    if head == "div" and len(vals) == 2:
        return None if vals[1] == 0 else vals[0] / vals[1]
    if head == "neg" and len(vals) == 1:
        return -vals[0]
    if head == "inv" and len(vals) == 1:
        return None if vals[0] == 0 else 1 / vals[0]
    return None
