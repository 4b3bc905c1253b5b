"""A generated problem and its rendering as one chat JSONL example in any mode."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from codec.codebook import CODE
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

    def reasoning(
        self, mode: Mode, codebook: Codebook | None = None, rng: random.Random | None = None
    ) -> str:
        """The reasoning text in one concrete mode.

        Assorted draws m from 0..len(steps) with `rng` (a fresh Random(0) when None) and writes
        the first m steps in codes, the rest in canonical text; it decodes to the canonical
        reasoning like encoded does.
        """
        if mode is Mode.ENGLISH:
            return self.english
        if mode is Mode.CANONICAL:
            return self.canonical_reasoning
        if mode is Mode.ENCODED or mode is Mode.ASSORTED:
            if codebook is None:
                raise CodebookError(f"{mode.value} mode needs a codebook; pass one (or build one)")
            if mode is Mode.ENCODED:
                return codebook.encode(self.canonical_reasoning)
            coded = (rng or random.Random(0)).randint(0, len(self.steps))
            return self.assorted_reasoning(codebook, coded)
        raise DomainError(
            f"render takes english, canonical, encoded or assorted, not {mode.value!r}; "
            "pick the mode of a mixed or transitional run with codec.modes.schedule_for"
        )

    def assorted_reasoning(self, codebook: Codebook, coded: int) -> str:
        """The first `coded` steps in codes, the rest in canonical text (0 <= coded <= steps)."""
        if not 0 <= coded <= len(self.steps):
            raise DomainError(
                f"coded steps {coded} out of range: this problem has {len(self.steps)} steps"
            )
        # The coded part is whole expressions, so decoding ends it at depth 0 and puts the
        # newline between steps back itself; the whitespace here only separates the parts.
        parts = []
        if coded:
            parts.append(codebook.encode(to_text_all(self.steps[:coded])))
        if coded < len(self.steps):
            parts.append(to_text_all(self.steps[coded:]))
        return "\n".join(parts)

    def assistant_content(
        self,
        mode: Mode,
        codebook: Codebook | None = None,
        rng: random.Random | None = None,
        settings: RenderSettings = RenderSettings(),
    ) -> str:
        return self._content(mode, codebook, rng or random.Random(0), settings)[0]

    def _content(
        self, mode: Mode, codebook: Codebook | None, rng: random.Random, settings: RenderSettings
    ) -> tuple[str, str]:
        """The assistant content and the reasoning inside it."""
        stops = rng.randint(settings.stop_min, settings.stop_max)
        # Assorted draws its m after the stop count: the other modes' streams stay as they were.
        reasoning = self.reasoning(mode, codebook, rng)
        content = (
            THINK * settings.think_repeat
            + "\n"
            + reasoning
            + "\n"
            + STOP * stops
            + "\n"
            + self.golden_text
        )
        return content, reasoning

    def render(
        self,
        mode: Mode,
        codebook: Codebook | None = None,
        rng: random.Random | None = None,
        settings: RenderSettings = RenderSettings(),
    ) -> dict[str, Any]:
        """One chat JSONL line (as a dict) in the questionnaire's format.

        When the reasoning holds codes, meta.codebook names the codebook's version: the
        trainer adds that codebook's codes as tokens and refuses a file of another codebook.
        """
        content, reasoning = self._content(mode, codebook, rng or random.Random(0), settings)
        line: dict[str, Any] = {
            "messages": [
                {"role": "user", "content": self.question},
                {"role": "assistant", "content": content},
            ]
        }
        if settings.include_meta:
            meta: dict[str, Any] = {
                "id": self.id,
                "domain": self.domain,
                "difficulty": self.difficulty,
                "golden": self.golden_text,
                "mode": mode.value,
            }
            if codebook is not None and CODE.search(reasoning):
                meta["codebook"] = codebook.version
            line["meta"] = meta
        return line
