"""Semantics of categorical syllogisms: validity by enumerating inhabited Venn regions.

Three terms S, M, P cut the universe into 7 regions (every non-empty combination of being
inside or outside each term; the region outside all three never matters). A model is the
set of regions that have at least one member: 2^7 = 128 models. A syllogism is valid when
every model that makes both premises true makes the conclusion true. With existential
import, only models where every term has a member count. No list of valid forms is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import product

S, M, P = 0, 1, 2
TERMS = (S, M, P)
REGIONS = tuple(range(1, 8))  # bit t set: the region lies inside term t
KIND_OF_LETTER = {"a": "all", "e": "no", "i": "some", "o": "some-not"}
LETTER_OF_KIND = {kind: letter for letter, kind in KIND_OF_LETTER.items()}
# figure -> (major premise terms, minor premise terms); the conclusion is always S-P
FIGURES: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    1: ((M, P), (S, M)),
    2: ((P, M), (S, M)),
    3: ((M, P), (M, S)),
    4: ((P, M), (M, S)),
}
RULES = (
    "undistributed-middle",
    "illicit-major",
    "illicit-minor",
    "exclusive-premises",
    "negative-premise",
    "negative-conclusion",
    "existential-fallacy",
)


@dataclass(frozen=True)
class Proposition:
    kind: str  # all, no, some, some-not
    subject: int
    predicate: int

    def holds(self, model: frozenset[int]) -> bool:
        s, p = 1 << self.subject, 1 << self.predicate
        if self.kind == "all":
            return not any(r & s and not r & p for r in model)
        if self.kind == "no":
            return not any(r & s and r & p for r in model)
        if self.kind == "some":
            return any(r & s and r & p for r in model)
        return any(r & s and not r & p for r in model)

    @property
    def negative(self) -> bool:
        return self.kind in ("no", "some-not")

    @property
    def universal(self) -> bool:
        return self.kind in ("all", "no")

    def distributes(self, term: int) -> bool:
        if term == self.subject:
            return self.kind in ("all", "no")
        if term == self.predicate:
            return self.kind in ("no", "some-not")
        return False


@dataclass(frozen=True)
class Form:
    mood: str  # three letters from a, e, i, o: major, minor, conclusion
    figure: int

    @property
    def premises(self) -> tuple[Proposition, Proposition]:
        (a, b), (c, d) = FIGURES[self.figure]
        return (
            Proposition(KIND_OF_LETTER[self.mood[0]], a, b),
            Proposition(KIND_OF_LETTER[self.mood[1]], c, d),
        )

    @property
    def conclusion(self) -> Proposition:
        return Proposition(KIND_OF_LETTER[self.mood[2]], S, P)

    @property
    def name(self) -> str:
        return f"{self.mood.upper()}-{self.figure}"


ALL_FORMS = tuple(
    Form("".join(letters), figure) for figure in FIGURES for letters in product("aeio", repeat=3)
)


@cache
def models(existential_import: bool) -> tuple[frozenset[int], ...]:
    found = []
    for bits in range(128):
        model = frozenset(r for r in REGIONS if bits >> (r - 1) & 1)
        if existential_import and not all(any(r >> t & 1 for r in model) for t in TERMS):
            continue
        found.append(model)
    return tuple(sorted(found, key=lambda m: (len(m), sorted(m))))


@cache
def countermodel(form: Form, existential_import: bool = False) -> frozenset[int] | None:
    """The smallest model where both premises hold and the conclusion fails, if any."""
    major, minor = form.premises
    for model in models(existential_import):
        if major.holds(model) and minor.holds(model) and not form.conclusion.holds(model):
            return model
    return None


def is_valid(form: Form, existential_import: bool = False) -> bool:
    return countermodel(form, existential_import) is None


def broken_rule(form: Form, existential_import: bool = False) -> str | None:
    """The first traditional rule the form breaks (used to explain, never to decide)."""
    major, minor = form.premises
    conclusion = form.conclusion
    if not (major.distributes(M) or minor.distributes(M)):
        return "undistributed-middle"
    if conclusion.distributes(P) and not major.distributes(P):
        return "illicit-major"
    if conclusion.distributes(S) and not minor.distributes(S):
        return "illicit-minor"
    if major.negative and minor.negative:
        return "exclusive-premises"
    if (major.negative or minor.negative) and not conclusion.negative:
        return "negative-premise"
    if conclusion.negative and not (major.negative or minor.negative):
        return "negative-conclusion"
    if not existential_import and major.universal and minor.universal and not conclusion.universal:
        return "existential-fallacy"
    return None


def valid_forms(existential_import: bool = False) -> tuple[Form, ...]:
    return tuple(f for f in ALL_FORMS if is_valid(f, existential_import))
