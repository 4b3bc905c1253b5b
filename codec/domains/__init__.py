"""The built-in domains: seeded generators, the held-out split, corpora and the default codebook."""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from codec.codebook import Codebook, build_codebook
from codec.domains import arithmetic, selfcorrect, syllogism, word
from codec.domains.base import Domain
from codec.errors import DomainError
from codec.modes import RENDER_MODES, Mode
from codec.problem import Problem, RenderSettings, Split

DOMAINS: dict[str, Domain] = {
    d.name: d for d in (arithmetic.DOMAIN, word.DOMAIN, syllogism.DOMAIN, selfcorrect.DOMAIN)
}
DEFAULT_CODEBOOK = Path(__file__).resolve().parent.parent / "default_codebook.json"
MAX_MISSES = 20_000  # consecutive draws of the wrong split before giving up


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise DomainError(
            f"unknown domain {name!r}; choose one of {', '.join(sorted(DOMAINS))}"
        ) from None


def generate(
    domain: str,
    *,
    count: int,
    difficulty: int,
    seed: int,
    split: Split = "train",
    unique: bool = True,
) -> Iterator[Problem]:
    """`count` problems of one domain and difficulty, reproducible for a seed.

    Problems whose canonical statement hashes into the other split are skipped, so the
    train and held-out outputs never share a problem. With `unique` (the default) no problem
    repeats within one call: a training file with the same problem twice is rejected by the
    trainer's duplicate-id check, and a small level (arithmetic level 1) repeats often.
    """
    spec = get_domain(domain)
    if difficulty not in spec.levels:
        raise DomainError(
            f"difficulty {difficulty} is not a level of {domain!r}; use one of "
            f"{', '.join(map(str, spec.levels))}"
        )
    if split not in ("train", "heldout"):
        raise DomainError(f"split {split!r} must be 'train' or 'heldout'")
    if count < 0:
        raise DomainError(f"count {count} must not be negative")
    rng = random.Random(f"{domain}:{difficulty}:{seed}")
    made = misses = 0
    seen: set[str] = set()
    while made < count:
        problem = spec.make(rng, difficulty)
        if problem.split != split or (unique and problem.id in seen):
            misses += 1
            if misses > MAX_MISSES:
                raise DomainError(
                    f"{domain} level {difficulty}: no new {split} problem in {MAX_MISSES} "
                    f"draws after {made} of the {count} asked for; this level has run out of "
                    "distinct problems: ask for fewer, or a higher --difficulty"
                )
            continue
        misses = 0
        made += 1
        if unique:
            seen.add(problem.id)
        yield problem


def mixed_problems(
    count: int, seed: int, split: Split = "train", *, unique: bool = True
) -> Iterator[Problem]:
    """Problems cycling over every domain and difficulty level, reproducible for a seed.

    A level that runs out of distinct problems (arithmetic level 1 holds ~40 held-out ones)
    leaves the cycle and the others go on; only when all have run out is it an error.
    """
    pairs = [(name, level) for name, d in DOMAINS.items() for level in d.levels]
    # Each stream is lazy, so asking each for `count` costs nothing until drawn.
    streams = [
        generate(name, count=count, difficulty=level, seed=seed, split=split, unique=unique)
        for name, level in pairs
    ]
    made = 0
    seen: set[str] = set()  # a problem can recur at another level of its domain
    while made < count:
        if not streams:
            raise DomainError(
                f"every domain and level ran out of distinct {split} problems after {made} "
                f"of the {count} asked for"
            )
        for stream in list(streams):
            if made == count:
                return
            try:
                problem = next(stream)
            except DomainError:
                streams.remove(stream)
                continue
            if unique:
                if problem.id in seen:
                    continue
                seen.add(problem.id)
            yield problem
            made += 1


def canonical_corpus(count: int, seed: int = 0) -> list[str]:
    """Printed canonical reasoning of `count` problems over all domains (a codebook corpus)."""
    # unique=False: the shipped codebook was learned from exactly this stream.
    return [p.canonical_reasoning for p in mixed_problems(count, seed, unique=False)]


def build_default_codebook() -> Codebook:
    """Learn the default codebook from the built-in domains under the whitespace counter."""
    return build_codebook(
        canonical_corpus(1200, seed=0), size=256, min_freq=5, tokenizer_name="whitespace"
    )


@lru_cache(maxsize=1)
def default_codebook() -> Codebook:
    """The default codebook: the versioned file shipped in the package (built if it is absent).

    A model trained on encoded data must be decoded with the same codes, so the default is a
    file under version control, not something rebuilt on the fly; a test checks that it still
    matches `build_default_codebook()`.
    """
    if DEFAULT_CODEBOOK.exists():
        return Codebook.load(DEFAULT_CODEBOOK)
    return build_default_codebook()


def sample_corpus(count: int, seed: int = 0) -> Iterator[str]:
    """`count` plain texts covering every domain in all three renderings (for tokenizer training).

    Each text is one whole example: the question, a newline, then the assistant content
    (thinking markers, reasoning in the example's mode, stop markers, answer).
    """
    rng = random.Random(f"sample-corpus:{seed}")
    codebook = default_codebook()
    # unique=False: the embedded tokenizer (embedded-v1) was trained on exactly this stream.
    for index, problem in enumerate(mixed_problems(count, seed, unique=False)):
        mode: Mode = RENDER_MODES[index % len(RENDER_MODES)]
        content = problem.assistant_content(mode, codebook, rng, RenderSettings())
        yield f"{problem.question}\n{content}"
