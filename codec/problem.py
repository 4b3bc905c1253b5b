"""A generated problem and its rendering as one chat JSONL example in any mode."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from codec.errors import CodebookError, DomainError
from codec.modes import Mode
from codec.sexpr import Expr, to_text, to_text_all

if TYPE_CHECKING:
    from codec.codebook import Codebook

Split = Literal["train", "heldout"]
THINK = "🤔"
STOP = "🛑"
HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class RenderSettings:
    think_repeat: int = 4  # how many 🤔 open the reasoning
    stop_min: int = 2  # fewest 🛑 closing it (drawn per example from the seeded rng)
    stop_max: int = 4  # most 🛑
    include_meta: bool = True  # add the optional "meta" object to each line

    def __post_init__(self) -> None:
        if self.think_repeat < 1 or not 1 <= self.stop_min <= self.stop_max:
            raise DomainError(
                f"render settings think_repeat={self.think_repeat} stop={self.stop_min}.."
                f"{self.stop_max}: need think_repeat >= 1 and 1 <= stop_min <= stop_max"
            )


def split_of(domain: str, spec: Expr) -> Split:
    """Held-out or train, decided by a hash of the canonical problem (disjoint by construction)."""
    digest = hashlib.sha256(f"{domain}\n{to_text(spec)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "heldout" if bucket < HELDOUT_FRACTION else "train"


@dataclass(frozen=True)
class Problem:
    """One problem with its verified golden answer and its reasoning in canonical form."""

    domain: str
    difficulty: int
    question: str
    spec: Expr  # the canonical problem statement: what the split and the id hash
    steps: tuple[Expr, ...]  # the canonical reasoning, one step per line
    english: str  # the same reasoning in plain English
    golden: Expr  # the canonical golden answer

    @property
    def id(self) -> str:
        digest = hashlib.sha256(f"{self.domain}\n{to_text(self.spec)}".encode()).hexdigest()
        return f"{self.domain}-{digest[:12]}"

    @property
    def split(self) -> Split:
        return split_of(self.domain, self.spec)

    @property
    def golden_text(self) -> str:
        return to_text(self.golden)

    @property
    def canonical_reasoning(self) -> str:
        return to_text_all(self.steps)

    def reasoning(self, mode: Mode, codebook: Codebook | None = None) -> str:
        """The reasoning text in one concrete mode."""
        if mode is Mode.ENGLISH:
            return self.english
        if mode is Mode.CANONICAL:
            return self.canonical_reasoning
        if mode is Mode.ENCODED:
            if codebook is None:
                raise CodebookError("encoded mode needs a codebook; pass one (or build one)")
            return codebook.encode(self.canonical_reasoning)
        raise DomainError(
            f"render takes english, canonical or encoded, not {mode.value!r}; "
            "pick the mode of a mixed or transitional run with codec.modes.schedule_for"
        )

    def assistant_content(
        self,
        mode: Mode,
        codebook: Codebook | None = None,
        rng: random.Random | None = None,
        settings: RenderSettings = RenderSettings(),
    ) -> str:
        stops = (rng or random.Random(0)).randint(settings.stop_min, settings.stop_max)
        return (
            THINK * settings.think_repeat
            + "\n"
            + self.reasoning(mode, codebook)
            + "\n"
            + STOP * stops
            + "\n"
            + self.golden_text
        )

    def render(
        self,
        mode: Mode,
        codebook: Codebook | None = None,
        rng: random.Random | None = None,
        settings: RenderSettings = RenderSettings(),
    ) -> dict[str, Any]:
        """One chat JSONL line (as a dict) in the questionnaire's format."""
        line: dict[str, Any] = {
            "messages": [
                {"role": "user", "content": self.question},
                {
                    "role": "assistant",
                    "content": self.assistant_content(mode, codebook, rng, settings),
                },
            ]
        }
        if settings.include_meta:
            line["meta"] = {
                "id": self.id,
                "domain": self.domain,
                "difficulty": self.difficulty,
                "golden": self.golden_text,
                "mode": mode.value,
            }
        return line
