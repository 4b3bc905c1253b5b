"""A study on the user's own data: canonical reasoning lines, rendered per mode by the codec.

Each line of the JSONL is a chat example in the questionnaire's format whose assistant turn
holds canonical reasoning (S-expressions, one step a line) and an answer:

    {"messages": [{"role": "user", "content": "…"},
                  {"role": "assistant", "content": "🤔🤔🤔🤔\\n(step …)\\n(step …)\\n🛑🛑\\n42"}],
     "meta": {"english": "the same reasoning in English (only for --modes english)"}}

The reasoning is parsed and canonicalized, so it is rendered canonical, encoded or assorted
exactly as the built-in domains are; English needs `meta.english`. The held-out problems are
a hash of the question (a tenth of them, as the codec splits its domains), never trained on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from codec.canonical import canonical_steps
from codec.errors import CodecError
from codec.evaluate import parse_answer, split_output
from codec.problem import Problem
from codec.sexpr import Str, read_all
from services.study.errors import StudyError

FORMAT = (
    "each line needs messages [user, assistant] whose assistant turn is 🤔🤔🤔🤔, the "
    "canonical reasoning (S-expressions), 🛑🛑 and the answer"
)


@dataclass(frozen=True)
class UserData:
    name: str  # the set's name in file names and eval.result (the file's stem, cleaned)
    train: list[Problem]
    heldout: list[Problem]


def data_name(path: Path) -> str:
    """A name safe in R3_FIXED_EVAL_SETS and file names: the file's stem, [a-z0-9_]."""
    return re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "data"


def _problem(name: str, text: str, where: str) -> Problem:
    try:
        line = json.loads(text)
        messages = line["messages"]
        question = next(m["content"] for m in messages if m["role"] == "user")
        answer_turn = [m["content"] for m in messages if m["role"] == "assistant"][-1]
    except (ValueError, KeyError, TypeError, IndexError, StopIteration) as exc:
        raise StudyError(f"{where}: not a chat example ({exc!r}); {FORMAT}") from None
    parts = split_output(answer_turn)
    if parts is None or not parts[1]:
        raise StudyError(f"{where}: the assistant turn has no 🛑 and answer after it; {FORMAT}")
    reasoning, answer = parts
    try:
        steps = canonical_steps(read_all(reasoning))
        golden = parse_answer(answer)
    except CodecError as exc:
        raise StudyError(
            f"{where}: the reasoning or answer is not canonical ({exc}); {FORMAT}"
        ) from None
    if not steps:
        raise StudyError(f"{where}: the reasoning is empty; {FORMAT}")
    meta = line.get("meta") if isinstance(line.get("meta"), dict) else {}
    english = str(meta["english"]) if isinstance(meta.get("english"), str) else ""
    return Problem(
        domain=name,
        difficulty=0,
        question=question,
        spec=Str(question),
        steps=steps,
        english=english,
        golden=golden,
    )


def read_data(path: Path, *, modes: tuple[str, ...], eval_size: int) -> UserData:
    """The file's problems, split into train and held-out (at most `eval_size` of them)."""
    name = data_name(path)
    problems: list[Problem] = []
    seen: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"--data {path}: cannot read it ({exc})") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        problem = _problem(name, text, f"{path}:{number}")
        if "english" in modes and not problem.english:
            raise StudyError(
                f"{path}:{number}: --modes has english but the line has no meta.english (the "
                "reasoning in English); add it to every line or drop english from --modes"
            )
        if problem.id not in seen:  # the trainer refuses a file with one problem twice
            seen.add(problem.id)
            problems.append(problem)
    heldout = [p for p in problems if p.split == "heldout"][:eval_size]
    train = [p for p in problems if p.split == "train"]
    if not heldout or not train:
        raise StudyError(
            f"--data {path}: {len(problems)} distinct problems give {len(train)} to train and "
            f"{len(heldout)} held out (a tenth, by a hash of the question); give more lines"
        )
    return UserData(name, train, heldout)
