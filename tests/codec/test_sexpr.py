"""The S-expression reader and printer."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings

from codec.errors import ParseError
from codec.sexpr import Str, Sym, join_tokens, lex, read, read_all, to_text, to_text_all
from tests.codec.strategies import expressions, steps


def test_reads_every_atom_kind() -> None:
    assert read("(add 3 -4 3/4 0.5 -2/6 x some-not)") == (
        Sym("add"),
        3,
        -4,
        Fraction(3, 4),
        Fraction(1, 2),
        Fraction(-1, 3),
        Sym("x"),
        Sym("some-not"),
    )
    assert read('(note "say \\"hi\\"\\n")') == (Sym("note"), Str('say "hi"\n'))
    assert read("4/2") == 2 and isinstance(read("4/2"), int)


def test_never_produces_floats() -> None:
    value = read("0.1")
    assert value == Fraction(1, 10) and not isinstance(value, float)


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("(add 1 2", 8, "expected ')'"),
        ("(add 1 2))", 9, "unexpected ')'"),
        ("(add 1 $x)", 7, "invalid atom '$x'"),
        ("(add 1/0 2)", 5, "zero denominator"),
        ('(note "open)', 6, "unterminated string"),
        ("   ", 0, "expected an expression"),
        ("(ans 1) (ans 2)", 8, "end of input"),
    ],
)
def test_errors_name_position_and_what_was_expected(
    text: str, position: int, expected: str
) -> None:
    with pytest.raises(ParseError) as info:
        read(text)
    assert info.value.position == position
    assert expected in str(info.value)
    assert f"position {position}" in str(info.value)


def test_error_reports_line_and_column() -> None:
    with pytest.raises(ParseError) as info:
        read_all("(ans 1)\n(ans $)")
    assert "line 2, column 6" in str(info.value)


@settings(max_examples=150, deadline=None)
@given(expressions)
def test_print_then_read_round_trips(expr: object) -> None:
    text = to_text(expr)  # type: ignore[arg-type]
    assert read(text) == expr
    assert join_tokens([t for t, _ in lex(text)]) == text


@settings(max_examples=80, deadline=None)
@given(steps)
def test_several_top_level_expressions_round_trip(exprs: list[object]) -> None:
    text = to_text_all(exprs)  # type: ignore[arg-type]
    assert read_all(text) == exprs
    assert join_tokens([t for t, _ in lex(text)]) == text
