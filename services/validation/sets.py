"""Fixed validation sets: held-out problems drawn once from a fixed seed and stored as JSONL.

A set is a file `$R3_DATA_DIR/validation/<domain>-d<difficulty>-<mode>.jsonl` in the chat
format the trainer reads, each line with `meta.golden`. It is written once (atomically) and
read back ever after, so every evaluation of a run, and of every later run, scores the same
problems. The problems come from the codec's held-out split (a hash of the canonical problem),
and the demo's training generator also skips every stored id: they are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codec.codebook import Codebook, recode
from codec.domains import default_codebook, generate
from codec.errors import DomainError
from codec.modes import Mode
from codec.problem import RenderSettings

# The modes a set may be rendered in: the pure ones and, where the codec has it, assorted
# (Token Assorted: codes for the first m steps, m drawn per item from the set's seeded rng).
SET_MODES: tuple[Mode, ...] = tuple(
    m for m in (Mode.ENGLISH, Mode.CANONICAL, Mode.ENCODED, getattr(Mode, "ASSORTED", None)) if m
)
CODED_SET_MODES: tuple[Mode, ...] = tuple(m for m in SET_MODES[2:])

# Changing it changes every stored set's content; stored files are trusted by name.
VALIDATION_SEED = 90_210
DEFAULT_SIZE = 64


@dataclass(frozen=True)
class ValidationItem:
    """One held-out problem with its golden answer and the reference conversation."""

    id: str
    domain: str
    difficulty: int
    mode: str
    question: str
    golden: str
    messages: tuple[dict[str, str], ...]  # user + reference assistant (for teacher-forced CE)
    codebook: str | None = None  # meta.codebook: the codebook a coded reference is written in

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> ValidationItem:
        meta = line["meta"]
        messages = tuple({"role": m["role"], "content": m["content"]} for m in line["messages"])
        return cls(
            id=str(meta["id"]),
            domain=str(meta["domain"]),
            difficulty=int(meta["difficulty"]),
            mode=str(meta["mode"]),
            question=messages[0]["content"],
            golden=str(meta["golden"]),
            messages=messages,
            codebook=meta.get("codebook") if isinstance(meta.get("codebook"), str) else None,
        )

    def in_codebook(self, target: Codebook, known: Sequence[Codebook]) -> ValidationItem:
        """This item with its coded reference re-encoded in `target` (the codebook answers
        are read with), so CE and answer CE score the codes the model was taught. `known`:
        the codebooks a stored reference may be written in (matched by version); a reference
        in none of them, or with no codes, is returned as it is."""
        if self.codebook is None or self.codebook == target.version:
            return self
        source = next((c for c in known if c.version == self.codebook), None)
        if source is None:
            return self
        messages = tuple(
            {**m, "content": recode(m["content"], source, target)}
            if m["role"] == "assistant"
            else m
            for m in self.messages
        )
        return dataclasses.replace(self, messages=messages, codebook=target.version)


def set_name(domain: str, difficulty: int, mode: Mode | str) -> str:
    """The stored set's name (also the EvalResult's `eval_set`)."""
    return f"{domain}-d{difficulty}-{Mode(mode).value}"


def set_path(root: Path, domain: str, difficulty: int, mode: Mode | str) -> Path:
    return Path(root) / f"{set_name(domain, difficulty, mode)}.jsonl"


def _draw(
    domain: str, difficulty: int, mode: Mode, size: int, codebook: Codebook | None = None
) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    rng = random.Random(f"validation:{domain}:{difficulty}:{VALIDATION_SEED}")
    codebook = (codebook or default_codebook()) if mode in CODED_SET_MODES else None
    problems = generate(
        domain, count=size, difficulty=difficulty, seed=VALIDATION_SEED, split="heldout"
    )
    try:
        for problem in problems:
            lines.append(problem.render(mode, codebook, rng, RenderSettings()))
    except DomainError:
        # A small level (arithmetic 1 has ~40 held-out problems) ends early: keep them all.
        if not lines:
            raise
    return lines


def ensure_set(
    root: Path,
    domain: str,
    difficulty: int,
    mode: Mode | str = Mode.CANONICAL,
    size: int = DEFAULT_SIZE,
    codebook: Codebook | None = None,
) -> Path:
    """The stored set's path, written now (temp file + rename) if it does not exist yet.

    Encoded and assorted sets are written with `codebook` (default: the built-in one)."""
    mode = Mode(mode)
    if mode not in SET_MODES:
        raise DomainError(
            f"a validation set is rendered in one mode ({', '.join(SET_MODES)}), not "
            f"{mode.value!r}; score a mixed run against each mode's set"
        )
    path = set_path(root, domain, difficulty, mode)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = _draw(domain, difficulty, mode, size, codebook)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    with partial.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def load_set(path: Path) -> list[ValidationItem]:
    """The items of a stored set, in their stored order."""
    with Path(path).open(encoding="utf-8") as handle:
        return [ValidationItem.from_line(json.loads(text)) for text in handle if text.strip()]


def stored_ids(root: Path) -> set[str]:
    """Every problem id in every stored set under `root`: what training data must never hold."""
    ids: set[str] = set()
    root = Path(root)
    if not root.is_dir():
        return ids
    for path in sorted(root.glob("*.jsonl")):
        ids.update(item.id for item in load_set(path))
    return ids


@dataclass(frozen=True)
class SetSpec:
    domain: str
    difficulty: int
    mode: Mode

    @property
    def name(self) -> str:
        return set_name(self.domain, self.difficulty, self.mode)


def parse_sets(text: str) -> list[SetSpec]:
    """`domain:difficulty:mode,…` (R3_FIXED_EVAL_SETS) into specs; errors name the bad part."""
    specs: list[SetSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pieces = part.split(":")
        if len(pieces) != 3 or not pieces[1].isdigit():
            raise DomainError(
                f"R3_FIXED_EVAL_SETS: {part!r} is not domain:difficulty:mode "
                "(e.g. syllogism:1:canonical)"
            )
        try:
            mode = Mode(pieces[2])
        except ValueError:
            raise DomainError(
                f"R3_FIXED_EVAL_SETS: {part!r}: mode must be one of {', '.join(SET_MODES)}"
            ) from None
        specs.append(SetSpec(pieces[0], int(pieces[1]), mode))
    return specs
