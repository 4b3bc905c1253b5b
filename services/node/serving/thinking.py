"""Thinking-marker control: the logits processors that keep 🤔…🛑 reasoning well formed.

A completion in the trained format opens its reasoning with a run of 🤔, reasons, closes
with a run of 🛑 (2–4 by default), then answers. These processors, applied to the logits
before sampling, enforce that shape:
- 🤔 only as one run at the start of the completion, at most `open_max` of them;
- 🛑 never before a 🤔 run; once a 🛑 run starts it goes on to `close_min` (forced) and
  stops at `close_max`;
- after the 🛑 run, no marker at all;
- with `max_tokens` set, reasoning that long forces the 🛑 run.

The rules work on token ids, so they need each marker to be one token (true of the embedded
tokenizer, which splits markers one by one); for a tokenizer where they are not,
`ThinkingMarkers.from_tokenizer` returns None and nothing is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

THINK_OPEN = "🤔"
THINK_CLOSE = "🛑"


class ThinkingOptions(BaseModel):
    """Per-request overrides (the `thinking` extra body field); None keeps the node default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="Apply the marker rules to this request.")
    open_max: int | None = Field(None, ge=0, le=64, description="Most 🤔 (one run, at the start).")
    close_min: int | None = Field(None, ge=1, le=64, description="Shortest 🛑 run.")
    close_max: int | None = Field(None, ge=1, le=64, description="Longest 🛑 run.")
    max_tokens: int | None = Field(
        None, ge=1, description="Reasoning tokens after which the 🛑 run is forced."
    )


@dataclass(frozen=True)
class ThinkingRules:
    """The resolved rules one request runs under."""

    open_max: int = 4
    close_min: int = 2
    close_max: int = 4
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.close_min > self.close_max:
            raise ValueError(
                f"thinking close_min ({self.close_min}) is more than close_max "
                f"({self.close_max}); set close_min <= close_max."
            )

    @classmethod
    def resolve(cls, defaults: ThinkingRules, options: ThinkingOptions | None) -> ThinkingRules:
        """`defaults` with the request's set fields applied (ValueError if inconsistent)."""
        if options is None:
            return defaults
        return cls(
            open_max=defaults.open_max if options.open_max is None else options.open_max,
            close_min=defaults.close_min if options.close_min is None else options.close_min,
            close_max=defaults.close_max if options.close_max is None else options.close_max,
            max_tokens=defaults.max_tokens if options.max_tokens is None else options.max_tokens,
        )


@dataclass(frozen=True)
class ThinkingMarkers:
    """The token ids of 🤔 and 🛑 in one tokenizer."""

    open_id: int
    close_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ThinkingMarkers | None:
        """The markers' ids, or None when either is not exactly one token."""
        ids = [tokenizer.encode(m, add_special_tokens=False) for m in (THINK_OPEN, THINK_CLOSE)]
        if any(len(i) != 1 for i in ids):
            return None
        # A run must stay one token per marker too (the embedded pre-tokenizer guarantees it).
        if tokenizer.encode(THINK_OPEN * 2, add_special_tokens=False) != ids[0] * 2:
            return None
        return cls(open_id=ids[0][0], close_id=ids[1][0])


class Phase(Enum):
    START = "start"  # nothing generated yet, or only non-markers before any 🤔 (answer only)
    OPENING = "opening"  # inside the 🤔 run
    THINKING = "thinking"  # after the 🤔 run, before any 🛑
    CLOSING = "closing"  # inside the 🛑 run
    ANSWER = "answer"  # after the 🛑 run, or after plain text with no 🤔 first


@dataclass(frozen=True)
class Constraint:
    """What the next token may be: `forced` alone, or anything but `banned`."""

    banned: tuple[int, ...] = ()
    forced: int | None = None


class ThinkingState:
    """One completion's position in the marker grammar, advanced token by token."""

    def __init__(self, rules: ThinkingRules, markers: ThinkingMarkers) -> None:
        self.rules = rules
        self.markers = markers
        self.phase = Phase.START
        self.opens = 0
        self.closes = 0
        self.thinking_tokens = 0

    def advance(self, token: int) -> None:
        m = self.markers
        if token == m.open_id:
            self.opens += 1
            self.phase = Phase.OPENING
        elif token == m.close_id:
            self.closes += 1
            self.phase = Phase.CLOSING
        elif self.phase is Phase.OPENING or self.phase is Phase.THINKING:
            self.phase = Phase.THINKING
            self.thinking_tokens += 1
        elif self.phase is Phase.START or self.phase is Phase.CLOSING:
            # Text before any 🤔 is an answer without reasoning; text after 🛑 is the answer.
            self.phase = Phase.ANSWER

    def constraint(self) -> Constraint:
        m, r = self.markers, self.rules
        phase = self.phase
        if phase is Phase.START:
            return Constraint(banned=(m.close_id,) if r.open_max > 0 else (m.close_id, m.open_id))
        if phase is Phase.OPENING:
            return Constraint(
                banned=(m.close_id,) if self.opens < r.open_max else (m.close_id, m.open_id)
            )
        if phase is Phase.THINKING:
            if r.max_tokens is not None and self.thinking_tokens >= r.max_tokens:
                return Constraint(forced=m.close_id)
            return Constraint(banned=(m.open_id,))
        if phase is Phase.CLOSING:
            if self.closes < r.close_min:
                return Constraint(forced=m.close_id)
            if self.closes >= r.close_max:
                return Constraint(banned=(m.open_id, m.close_id))
            return Constraint(banned=(m.open_id,))
        return Constraint(banned=(m.open_id, m.close_id))


def apply_constraints(scores: torch.Tensor, constraints: Sequence[Constraint | None]) -> None:
    """Apply one constraint per row of `scores` (batch × vocab) in place, as -inf logits."""
    for row, c in enumerate(constraints):
        if c is None:
            continue
        if c.forced is not None:
            keep = scores[row, c.forced].clone()
            scores[row].fill_(float("-inf"))
            scores[row, c.forced] = keep if torch.isfinite(keep) else 0.0
        elif c.banned:
            scores[row, list(c.banned)] = float("-inf")


class ThinkingLogitsProcessor:
    """The same rules as a Hugging Face logits processor (usable with `model.generate`).

    Stateless between calls: it replays each row's generated tokens (those after
    `prompt_length`) to find where the row stands, so it is correct whatever the caller
    does with the rows. The engine uses `ThinkingState` directly, advanced incrementally.
    """

    def __init__(self, rules: ThinkingRules, markers: ThinkingMarkers, prompt_length: int):
        self.rules = rules
        self.markers = markers
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        constraints = []
        for row in input_ids[:, self.prompt_length :].tolist():
            state = ThinkingState(self.rules, self.markers)
            for token in row:
                state.advance(token)
            constraints.append(state.constraint())
        scores = scores.clone()
        apply_constraints(scores, constraints)
        return scores
