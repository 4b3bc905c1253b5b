"""S-expression reader and printer: integers, exact rationals, symbols, strings and lists.

Grammar (whitespace separates atoms and is otherwise ignored)::

    expr     := atom | "(" expr* ")"
    atom     := integer | rational | decimal | symbol | string
    integer  := [+-]? digits                     e.g. 42, -7
    rational := [+-]? digits "/" digits     e.g. 3/4, -2/6  (read exactly, printed reduced)
    decimal  := [+-]? digits "." digits     e.g. 0.5        (read exactly as 1/2, never a float)
    symbol   := [A-Za-z_] [A-Za-z0-9_-]*         e.g. add, v1, some-not
    string   := '"' (char | '\\"' | '\\\\' | '\\n')* '"'

The printer writes one space between list elements and a newline between top-level
expressions, so a printed text is fully determined by its sequence of lexical tokens
(`lex` / `join_tokens`); the codebook relies on that to be lossless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeAlias

from codec.errors import ParseError


@dataclass(frozen=True, slots=True)
class Sym:
    """A symbol: an operator name, a variable (v1, v2, …) or a constant such as `valid`."""

    name: str

    def __repr__(self) -> str:
        return f"Sym({self.name!r})"


@dataclass(frozen=True, slots=True)
class Str:
    """A string literal (free text inside a general step)."""

    value: str


Number: TypeAlias = int | Fraction
Atom: TypeAlias = int | Fraction | Sym | Str
Expr: TypeAlias = "int | Fraction | Sym | Str | tuple[Expr, ...]"

_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\\n]|\\.)*")|([^\s()"]+))')
_INT = re.compile(r"[+-]?\d+")
_RATIONAL = re.compile(r"([+-]?\d+)/(\d+)")
_DECIMAL = re.compile(r"[+-]?\d+\.\d+")
SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_EXPECTED_ATOM = "expected an integer, a rational like 3/4, a decimal like 0.5, or a symbol"


def number(value: int | Fraction) -> Number:
    """The normal representation of an exact number: an int when whole, else a Fraction."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value.numerator)
    return value


def read_atom(token: str, *, text: str = "", position: int = 0) -> Atom:
    """Classify one atom token; raise ParseError naming the position when it is not valid."""
    source = text or token
    if token.startswith('"'):
        return Str(_unescape(token[1:-1]))
    if _INT.fullmatch(token):
        return int(token)
    match = _RATIONAL.fullmatch(token)
    if match:
        if int(match.group(2)) == 0:
            raise ParseError(
                f"rational {token!r} has a zero denominator; write a non-zero denominator",
                text=source,
                position=position,
            )
        return number(Fraction(int(match.group(1)), int(match.group(2))))
    if _DECIMAL.fullmatch(token):
        return number(Fraction(token))
    if SYMBOL.fullmatch(token):
        return Sym(token)
    raise ParseError(f"invalid atom {token!r}: {_EXPECTED_ATOM}", text=source, position=position)


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), body)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def lex(text: str) -> list[tuple[str, int]]:
    """Split text into lexical tokens with their start positions; atoms are not classified."""
    tokens: list[tuple[str, int]] = []
    pos, end = 0, len(text)
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None:
            start = len(text) - len(text[pos:].lstrip())
            if start >= end:
                break
            raise ParseError(
                "unterminated string: expected a closing '\"'", text=text, position=start
            )
        if match.lastindex is None:
            break
        tokens.append((match.group(match.lastindex), match.start(match.lastindex)))
        pos = match.end()
    return tokens


def read_all(text: str) -> list[Expr]:
    """Read every top-level expression in text."""
    stack: list[tuple[list[Expr], int]] = []
    top: list[Expr] = []
    for token, position in lex(text):
        if token == "(":
            stack.append(([], position))
        elif token == ")":
            if not stack:
                raise ParseError(
                    "unexpected ')': expected an atom, '(' or the end of input; remove it",
                    text=text,
                    position=position,
                )
            items, _ = stack.pop()
            (stack[-1][0] if stack else top).append(tuple(items))
        else:
            atom = read_atom(token, text=text, position=position)
            (stack[-1][0] if stack else top).append(atom)
    if stack:
        raise ParseError(
            f"expected ')' to close the '(' opened at position {stack[-1][1]}",
            text=text,
            position=len(text),
        )
    return top


def read(text: str) -> Expr:
    """Read exactly one expression; anything after it is an error."""
    exprs = read_all(text)
    if not exprs:
        raise ParseError("expected an expression, found only whitespace", text=text, position=0)
    if len(exprs) > 1:
        tokens = lex(text)
        depth, end = 0, 0
        while True:  # find where the first expression ends
            token = tokens[end][0]
            depth += 1 if token == "(" else -1 if token == ")" else 0
            end += 1
            if depth == 0:
                break
        raise ParseError(
            "expected the end of input after one expression; wrap several in a list",
            text=text,
            position=tokens[end][1],
        )
    return exprs[0]


def format_atom(atom: Atom) -> str:
    if isinstance(atom, Sym):
        return atom.name
    if isinstance(atom, Str):
        return f'"{_escape(atom.value)}"'
    if isinstance(atom, Fraction):
        if atom.denominator == 1:
            return str(atom.numerator)
        return f"{atom.numerator}/{atom.denominator}"
    return str(atom)


def to_text(expr: Expr) -> str:
    """Print one expression: one space between list elements, no other whitespace."""
    if isinstance(expr, tuple):
        return "(" + " ".join(to_text(e) for e in expr) + ")"
    return format_atom(expr)


def to_text_all(exprs: Iterable[Expr]) -> str:
    """Print several top-level expressions, one per line."""
    return "\n".join(to_text(e) for e in exprs)


def join_tokens(tokens: Sequence[str], *, toplevel_newlines: bool = True) -> str:
    """Rebuild the printed text from its lexical tokens (the inverse of `lex` on printed text)."""
    parts: list[str] = []
    depth = 0
    previous = ""
    for token in tokens:
        if parts:
            if toplevel_newlines and depth == 0:
                parts.append("\n")
            elif previous != "(" and token != ")":
                parts.append(" ")
        parts.append(token)
        depth += 1 if token == "(" else -1 if token == ")" else 0
        previous = token
    return "".join(parts)


def is_symbol(expr: Expr, name: str | None = None) -> bool:
    return isinstance(expr, Sym) and (name is None or expr.name == name)
