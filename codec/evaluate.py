"""Evaluation: compare a model's answer with the golden one by canonical form and by value."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from codec.canonical import canonical
from codec.codebook import Codebook
from codec.errors import CodecError
from codec.operators import numeric_value
from codec.problem import STOP, THINK
from codec.sexpr import Expr, Sym, read, read_all, to_text

_CODE = re.compile(r"<E\d{3}>")
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]*")


@dataclass(frozen=True)
class EvalResult:
    """The verdict on one output. `parse_failed` outputs are never counted as wrong answers."""

    match: bool
    parse_failed: bool
    predicted: str | None  # the predicted answer in canonical form (None when it did not parse)
    golden: str  # the golden answer in canonical form
    reason: str  # why: "canonical form", "numeric value", "wrong answer", or the parse error
    reasoning_parsed: bool | None = (
        None  # did the canonical/encoded reasoning parse (None: English)
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "parse_failed": self.parse_failed,
            "predicted": self.predicted,
            "golden": self.golden,
            "reason": self.reason,
            "reasoning_parsed": self.reasoning_parsed,
        }


def split_output(raw: str) -> tuple[str, str] | None:
    """(reasoning, answer) from an assistant output; None when no 🛑 marker closes the thinking."""
    stop = raw.rfind(STOP)
    if stop < 0:
        return None
    start = stop
    while start >= len(STOP) and raw[start - len(STOP) : start] == STOP:
        start -= len(STOP)
    reasoning = raw[:start].strip().lstrip(THINK).strip()
    return reasoning, raw[stop + len(STOP) :].strip()


def parse_answer(text: str, codebook: Codebook | None = None) -> Expr:
    """Read an answer: an S-expression, an integer, 2/4, 0.5, a word; codes are decoded first."""
    if _CODE.search(text):
        if codebook is None:
            raise CodecError("the answer holds <E###> codes but no codebook was given")
        text = codebook.decode(text)
    text = text.strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    if _WORD.fullmatch(text):
        return Sym(text.lower())
    return canonical(read(text))


def _reasoning_parses(reasoning: str, codebook: Codebook | None) -> bool | None:
    if _CODE.search(reasoning):
        if codebook is None:
            return False
        try:
            read_all(codebook.decode(reasoning))
        except CodecError:
            return False
        return True
    if reasoning.startswith("("):
        try:
            read_all(reasoning)
        except CodecError:
            return False
        return True
    return None


def answers_equal(predicted: Expr, golden: Expr) -> tuple[bool, str]:
    """Equal by canonical form, or (for arithmetic) by exact numeric value."""
    if canonical(predicted) == canonical(golden):
        return True, "canonical form"
    a, b = numeric_value(predicted), numeric_value(golden)
    if a is not None and b is not None and a == b:
        return True, "numeric value"
    return False, "wrong answer"


def evaluate_output(
    raw: str, golden: str | Expr, *, codebook: Codebook | None = None
) -> EvalResult:
    """Judge a raw assistant output (markers, reasoning in any mode, answer) against `golden`."""
    golden_expr = parse_answer(golden) if isinstance(golden, str) else canonical(golden)
    golden_text = to_text(golden_expr)
    parts = split_output(raw)
    if parts is None:
        return EvalResult(False, True, None, golden_text, f"no {STOP} marker before the answer")
    reasoning, answer_text = parts
    reasoning_ok = _reasoning_parses(reasoning, codebook)
    if not answer_text:
        return EvalResult(False, True, None, golden_text, "empty answer", reasoning_ok)
    try:
        predicted = parse_answer(answer_text, codebook)
    except CodecError as err:
        return EvalResult(False, True, None, golden_text, f"answer: {err}", reasoning_ok)
    match, why = answers_equal(predicted, golden_expr)
    return EvalResult(match, False, to_text(predicted), golden_text, why, reasoning_ok)


@dataclass
class Cell:
    """Counts for one pattern (domain × difficulty)."""

    total: int = 0
    correct: int = 0
    wrong: int = 0
    parse_failed: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class Scoreboard:
    """Results per pattern (domain × difficulty), ready for a dashboard heatmap."""

    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)

    def add(self, domain: str, difficulty: int, result: EvalResult) -> None:
        cell = self.cells.setdefault((domain, difficulty), Cell())
        cell.total += 1
        if result.parse_failed:
            cell.parse_failed += 1
        elif result.match:
            cell.correct += 1
        else:
            cell.wrong += 1

    def total(self) -> Cell:
        out = Cell()
        for cell in self.cells.values():
            out.total += cell.total
            out.correct += cell.correct
            out.wrong += cell.wrong
            out.parse_failed += cell.parse_failed
        return out

    def heatmap(self) -> dict[str, Any]:
        """{domains, difficulties, accuracy[domain][difficulty] (None: no data), cells[…]}."""
        domains = sorted({d for d, _ in self.cells})
        levels = sorted({k for _, k in self.cells})
        grid = [
            [
                round(self.cells[(d, k)].accuracy, 4) if (d, k) in self.cells else None
                for k in levels
            ]
            for d in domains
        ]
        rows = [
            {
                "domain": d,
                "difficulty": k,
                "total": c.total,
                "correct": c.correct,
                "wrong": c.wrong,
                "parse_failed": c.parse_failed,
                "accuracy": round(c.accuracy, 4),
            }
            for (d, k), c in sorted(self.cells.items())
        ]
        total = self.total()
        return {
            "domains": domains,
            "difficulties": levels,
            "accuracy": grid,
            "cells": rows,
            "total": {
                "total": total.total,
                "correct": total.correct,
                "wrong": total.wrong,
                "parse_failed": total.parse_failed,
                "accuracy": round(total.accuracy, 4),
            },
        }


def aggregate(results: Iterable[tuple[str, int, EvalResult]]) -> Scoreboard:
    """Collect (domain, difficulty, result) triples into a Scoreboard."""
    board = Scoreboard()
    for domain, difficulty, result in results:
        board.add(domain, difficulty, result)
    return board
