"""Syllogism domain: is a categorical syllogism valid? Decided by the Venn-region checker."""

from __future__ import annotations

import random

from codec.domains.base import Domain, assemble
from codec.domains.venn import (
    ALL_FORMS,
    KIND_OF_LETTER,
    Form,
    M,
    P,
    Proposition,
    S,
    broken_rule,
    countermodel,
    is_valid,
)
from codec.problem import Problem
from codec.sexpr import Expr, Sym

NOUNS = (
    "animals",
    "mammals",
    "dogs",
    "cats",
    "birds",
    "reptiles",
    "pets",
    "fish",
    "insects",
    "plants",
    "trees",
    "flowers",
    "students",
    "teachers",
    "artists",
    "doctors",
    "athletes",
    "musicians",
    "poets",
    "farmers",
    "cars",
    "boats",
    "machines",
    "tools",
    "metals",
    "rocks",
    "fruits",
    "vegetables",
    "books",
    "games",
)
NONSENSE = (
    "blickets",
    "wugs",
    "daxes",
    "florps",
    "zorbs",
    "glimps",
    "trovs",
    "snerks",
    "quibs",
    "marfs",
    "tozes",
    "plinks",
)
RULE_TEXT = {
    "undistributed-middle": "the middle term {m} is not distributed in either premise, so the "
    "premises never link {s} and {p} through all of {m}",
    "illicit-major": "{p} is distributed in the conclusion but not in the premise that "
    "mentions it, so the conclusion says more about {p} than the premises do",
    "illicit-minor": "{s} is distributed in the conclusion but not in the premise that "
    "mentions it, so the conclusion says more about {s} than the premises do",
    "exclusive-premises": "both premises are negative, and two negative premises cannot "
    "connect {s} with {p}",
    "negative-premise": "one premise is negative, but the conclusion is affirmative",
    "negative-conclusion": "the conclusion is negative, but both premises are affirmative",
    "existential-fallacy": "both premises are universal but the conclusion is particular, so "
    "the conclusion claims that something exists while the premises never say so",
}
# difficulty -> (figures used, nonsense terms, chance of existential import)
LEVELS: dict[int, tuple[tuple[int, ...], bool, float]] = {
    1: ((1,), False, 0.0),
    2: ((1, 2), False, 0.0),
    3: ((1, 2, 3, 4), False, 0.0),
    4: ((1, 2, 3, 4), True, 0.0),
    5: ((1, 2, 3, 4), True, 0.5),
}


def sentence(prop: Proposition, names: tuple[str, str, str]) -> str:
    a, b = names[prop.subject], names[prop.predicate]
    return {
        "all": f"All {a} are {b}.",
        "no": f"No {a} are {b}.",
        "some": f"Some {a} are {b}.",
        "some-not": f"Some {a} are not {b}.",
    }[prop.kind]


def as_expr(prop: Proposition, names: tuple[str, str, str]) -> Expr:
    return (Sym(prop.kind), Sym(names[prop.subject]), Sym(names[prop.predicate]))


def describe_region(region: int, names: tuple[str, str, str]) -> str:
    inside = [names[t] for t in (S, M, P) if region >> t & 1]
    outside = [names[t] for t in (S, M, P) if not region >> t & 1]
    text = " and ".join(inside)
    return f"{text} that are not {' or '.join(outside)}" if outside else f"{text} all at once"


def make_problem(
    form: Form, names: tuple[str, str, str], existential_import: bool, difficulty: int
) -> Problem:
    major, minor = form.premises
    conclusion = form.conclusion
    s, m, p = names
    valid = is_valid(form, existential_import)
    question = (
        f"Premise 1: {sentence(major, names)}\nPremise 2: {sentence(minor, names)}\n"
        f"Conclusion: {sentence(conclusion, names)}\n"
        + (
            f"Assume there is at least one of each: {s}, {m} and {p}.\n"
            if existential_import
            else ""
        )
        + "Is this syllogism valid or invalid?"
    )
    spec: Expr = (
        Sym("syl"),
        as_expr(major, names),
        as_expr(minor, names),
        as_expr(conclusion, names),
        *((Sym("import"),) if existential_import else ()),
    )
    letters = form.mood.upper()
    english = [
        f"The middle term is {m}, which appears in both premises but not in the conclusion.",
        f"The premises are {letters[0]} and {letters[1]} statements and the conclusion is an "
        f"{letters[2]} statement, so the form is {letters} in figure {form.figure}.",
    ]
    steps: list[Expr] = [(Sym("mid"), Sym(m)), (Sym("form"), Sym(form.mood), form.figure)]
    rule = broken_rule(form, existential_import)
    if rule is None:
        steps.append((Sym("passes"),))
        english.append(
            "The middle term is distributed at least once, no term is distributed in the "
            "conclusion without being distributed in its premise, and the negatives match, "
            "so no rule is broken."
        )
    else:
        steps.append((Sym("breaks"), Sym(rule)))
        english.append(f"This breaks a rule: {RULE_TEXT[rule].format(s=s, m=m, p=p)}.")
    counter = countermodel(form, existential_import)
    if counter is None:
        english.append(
            "Checking every way the three groups can overlap confirms that whenever both "
            "premises are true, the conclusion is true as well. So the syllogism is valid."
        )
    else:
        regions = sorted(counter)
        steps.append(
            (
                Sym("counter"),
                *(
                    (Sym("region"), *(Sym(names[t]) for t in (S, M, P) if r >> t & 1))
                    for r in regions
                ),
            )
        )
        described = "; ".join(describe_region(r, names) for r in regions)
        world = f"the only things that exist are {described}" if regions else "nothing exists"
        english.append(
            f"For example, if {world}, both premises are true but the conclusion is false. "
            "So the syllogism is invalid."
        )
    answer = Sym("valid" if valid else "invalid")
    return assemble("syllogism", difficulty, question, spec, steps, english, answer)


def make(rng: random.Random, difficulty: int) -> Problem:
    figures, nonsense, import_chance = LEVELS[difficulty]
    existential_import = rng.random() < import_chance
    want_valid = rng.random() < 0.5
    forms = [
        f
        for f in ALL_FORMS
        if f.figure in figures and is_valid(f, existential_import) == want_valid
    ]
    form = rng.choice(forms)
    s, m, p = rng.sample(NONSENSE if nonsense else NOUNS, 3)
    return make_problem(form, (s, m, p), existential_import, difficulty)


DOMAIN = Domain(
    name="syllogism",
    levels=tuple(LEVELS),
    make=make,
    description="categorical syllogisms, valid or invalid (level 5: existential import)",
)

__all__ = ["DOMAIN", "KIND_OF_LETTER", "make", "make_problem"]
