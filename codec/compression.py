"""Compression measurement: thinking tokens per example in each mode, per domain."""

from __future__ import annotations

from dataclasses import dataclass

from codec.codebook import Codebook, TokenCounter
from codec.domains import DOMAINS, generate
from codec.modes import RENDER_MODES, Mode
from codec.problem import Split


@dataclass(frozen=True)
class DomainCompression:
    """Thinking-token totals of one domain over `examples` problems (all difficulty levels)."""

    domain: str
    examples: int
    english: int
    canonical: int
    encoded: int

    def per_example(self, mode: Mode) -> float:
        return getattr(self, mode.value) / self.examples if self.examples else 0.0

    @property
    def canonical_ratio(self) -> float:
        return self.canonical / self.english if self.english else 0.0

    @property
    def encoded_ratio(self) -> float:
        return self.encoded / self.english if self.english else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "examples": self.examples,
            "tokens_per_example": {m.value: round(self.per_example(m), 2) for m in RENDER_MODES},
            "canonical_over_english": round(self.canonical_ratio, 4),
            "encoded_over_english": round(self.encoded_ratio, 4),
        }


def measure(
    count_tokens: TokenCounter,
    codebook: Codebook,
    *,
    per_level: int = 50,
    seed: int = 0,
    split: Split = "heldout",
) -> list[DomainCompression]:
    """Count the reasoning (thinking) tokens of each mode on every built-in domain.

    Held-out problems by default, so a codebook learned on training output is not measured
    on its own corpus.
    """
    results = []
    for name, domain in DOMAINS.items():
        totals = dict.fromkeys(RENDER_MODES, 0)
        examples = 0
        for level in domain.levels:
            # unique=False: the figures in bench/README.md were measured on this stream.
            for problem in generate(
                name, count=per_level, difficulty=level, seed=seed, split=split, unique=False
            ):
                examples += 1
                for mode in RENDER_MODES:
                    totals[mode] += count_tokens(problem.reasoning(mode, codebook))
        results.append(
            DomainCompression(
                name,
                examples,
                totals[Mode.ENGLISH],
                totals[Mode.CANONICAL],
                totals[Mode.ENCODED],
            )
        )
    return results
