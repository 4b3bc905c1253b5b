"""Self-generated training data: the active model's attempts, verified, as a JSONL shard.

Each problem comes from the codec's train split (never a held-out one). The node samples one
attempt; the codec judges it. A correct attempt whose reasoning is well formed is kept as the
model's own trace. A wrong numeric answer becomes a self-correction example in the shape of
the codec's `selfcorrect` domain: the last step is written with the model's wrong value,
checked, and revised to the right one. Anything else (no parsable answer, a wrong answer the
self-correction shape cannot hold, e.g. a syllogism's) falls back to the golden trace, or is
skipped with `fallback="skip"`. Every line is rendered by `Problem.render`, the same generator
`regime3 data generate` uses, and re-checked by the codec before it is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import httpx

from codec.canonical import canonical_steps
from codec.codebook import CODE, Codebook
from codec.domains import default_codebook
from codec.domains import generate as generate_problems
from codec.domains.base import fmt
from codec.domains.selfcorrect import describe
from codec.errors import CodecError
from codec.evaluate import evaluate_output, parse_answer, split_output
from codec.modes import Mode, schedule_for
from codec.operators import numeric_value
from codec.problem import STOP, THINK, Problem, RenderSettings
from codec.sexpr import Expr, Sym, number
from services.node.worker.node_client import ModelGone, NodeClient, Reply

Source = Literal["model", "selfcorrect", "golden"]
Fallback = Literal["golden", "skip"]


class UploadError(RuntimeError):
    """The gateway did not take the shard."""


# --- turning one attempt into a training line ------------------------------------------------


def reasoning_mode(reasoning: str) -> Mode:
    """The mode a model wrote its reasoning in: codes → encoded, S-expressions → canonical."""
    if CODE.search(reasoning):
        return Mode.ENCODED
    if reasoning.lstrip().startswith("("):
        return Mode.CANONICAL
    return Mode.ENGLISH


def _replace_last_number(text: str, old: str, new: str) -> str | None:
    matches = list(re.finditer(rf"(?<![\d/.]){re.escape(old)}(?![\d/])", text))
    if not matches:
        return None
    last = matches[-1]
    return text[: last.start()] + new + text[last.end() :]


def selfcorrection_problem(problem: Problem, wrong: Expr) -> Problem | None:
    """`problem` with its last step slipped to the model's `wrong` value, checked, revised.

    None when the shape does not fit: the answer is not the value of a last `let` step, or
    either answer is not a number.
    """
    if len(problem.steps) < 2:
        return None
    last, answer = problem.steps[-2], problem.steps[-1]
    right, slip = numeric_value(problem.golden), numeric_value(wrong)
    if right is None or slip is None or slip == right:
        return None
    if not (isinstance(last, tuple) and len(last) == 4 and last[0] == Sym("let")):
        return None
    _, var, expr, value = last
    if numeric_value(value) != right or not (isinstance(answer, tuple) and answer[0] == Sym("ans")):
        return None
    steps = canonical_steps(
        [
            *problem.steps[:-2],
            (Sym("let"), var, expr, number(slip)),
            (Sym("check"), var, expr, number(right)),
            (Sym("revise"), var, number(right)),
            answer,
        ]
    )
    english = _selfcorrection_english(problem, expr, right, slip)
    if english is None:
        return None
    return dataclasses.replace(problem, steps=steps, english=english)


def _values(problem: Problem) -> dict[str, Fraction]:
    out: dict[str, Fraction] = {}
    for step in problem.steps:
        if isinstance(step, tuple) and len(step) == 4 and step[0] == Sym("let"):
            value = numeric_value(step[3])
            if isinstance(step[1], Sym) and value is not None:
                out[step[1].name] = value
    return out


def _selfcorrection_english(
    problem: Problem, expr: Expr, right: Fraction, slip: Fraction
) -> str | None:
    # The English ends "… which gives 21. So the value of … is 21.": the slip replaces the
    # last step's value, then the check and revision come before the closing sentence, as
    # in the codec's selfcorrect domain.
    head, sep, outro = problem.english.rpartition(" So ")
    if not sep:
        head, outro = problem.english, ""
    slipped = _replace_last_number(head, fmt(right), fmt(slip))
    if slipped is None:
        return None
    try:
        shown = describe(expr, _values(problem))
        check = (
            f"Let me check that step: {shown} is {fmt(right)}, not {fmt(slip)}. "
            f"I made a mistake there, so I correct it: {shown} = {fmt(right)}."
        )
    except (AssertionError, KeyError):
        check = (
            f"Let me check that step: it gives {fmt(right)}, not {fmt(slip)}. "
            f"I made a mistake there, so I correct it to {fmt(right)}."
        )
    return f"{slipped} {check}" + (f" So {outro}" if outro else "")


def model_trace(
    problem: Problem,
    reply: str,
    rng: random.Random,
    settings: RenderSettings,
    codebook: Codebook | None,
) -> dict[str, Any] | None:
    """The model's own correct attempt as a line, markers normalized; None if not clean."""
    parts = split_output(reply)
    if parts is None:
        return None
    reasoning = parts[0].strip()
    if not reasoning or THINK in reasoning or STOP in reasoning:
        return None
    mode = reasoning_mode(reasoning)
    # Rendered for its skeleton (user turn, meta); the assistant turn becomes the model's.
    line = problem.render(Mode.ENGLISH, None, rng, settings)
    stops = rng.randint(settings.stop_min, settings.stop_max)
    content = f"{THINK * settings.think_repeat}\n{reasoning}\n{STOP * stops}\n{problem.golden_text}"
    verdict = evaluate_output(content, problem.golden, codebook=codebook)
    if not verdict.match or verdict.reasoning_parsed is False:
        return None
    line["messages"][-1]["content"] = content
    if "meta" in line:
        line["meta"]["mode"] = mode.value
    return line


@dataclass(frozen=True)
class Attempt:
    problem: Problem
    reply: Reply
    mode: Mode  # how golden and self-correction lines of this problem are rendered


def build_line(
    attempt: Attempt,
    *,
    rng: random.Random,
    settings: RenderSettings,
    codebook: Codebook | None,
    fallback: Fallback,
) -> tuple[dict[str, Any] | None, Source | None, str]:
    """(line, where it came from, what the codec said of the attempt)."""
    problem = attempt.problem
    verdict = evaluate_output(attempt.reply.text, problem.golden, codebook=codebook)
    kind = "correct" if verdict.match else ("unparsed" if verdict.parse_failed else "wrong")
    line: dict[str, Any] | None = None
    source: Source | None = None
    if verdict.match:
        line = model_trace(problem, attempt.reply.text, rng, settings, codebook)
        source = "model" if line is not None else None
    elif not verdict.parse_failed and verdict.predicted is not None:
        fixed = selfcorrection_problem(problem, parse_answer(verdict.predicted))
        if fixed is not None:
            line = fixed.render(attempt.mode, codebook, rng, settings)
            source = "selfcorrect"
    if line is None and fallback == "golden":
        line = problem.render(attempt.mode, codebook, rng, settings)
        source = "golden"
    if line is not None:
        # Nothing unverified leaves this function: the line's own answer must be golden.
        check = evaluate_output(line["messages"][-1]["content"], problem.golden, codebook=codebook)
        if not check.match:
            raise CodecError(f"{problem.id}: a {source} line does not verify ({check.reason})")
        meta = line.setdefault("meta", {})
        meta.update(source=source, attempt=kind, model=attempt.reply.model)
        parts = split_output(line["messages"][-1]["content"])
        if codebook is not None and parts is not None and CODE.search(parts[0]):
            # What its codes mean (contract C4): the trainer refuses to mix codebooks in a run.
            meta["codebook"] = codebook.version
    return line, source, kind


class ModelCodebooks:
    """The codebook each answering model's codes mean, asked of the node once per model id.

    A job starts with the serving model's codebook, but a hot swap mid-job makes another
    model answer: its replies are judged, rendered and stamped with its own codebook
    (GET /v1/models/{id}/codebook), never with the one in hand. A model the node no longer
    knows raises ModelGone (remembered): nothing can say what its codes meant.
    """

    def __init__(
        self,
        fetch: Callable[[str], Codebook | None],
        known: dict[str, Codebook | None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._known: dict[str, Codebook | None] = dict(known or {})
        self._gone: dict[str, str] = {}

    def __call__(self, model: str) -> Codebook | None:
        if model in self._known:
            return self._known[model]
        if model in self._gone:
            raise ModelGone(self._gone[model])
        try:
            # None from the node: the model carries no codebook, the default one applies.
            codebook = self._fetch(model) or default_codebook()
        except ModelGone as err:
            self._gone[model] = str(err)
            raise
        self._known[model] = codebook
        return codebook


# --- a shard ---------------------------------------------------------------------------------


@dataclass
class GenerationReport:
    path: Path
    problems: int = 0
    lines: int = 0
    attempts: Counter[str] = field(default_factory=Counter)  # correct / wrong / unparsed
    sources: Counter[str] = field(default_factory=Counter)  # model / selfcorrect / golden
    models: set[str] = field(default_factory=set)
    # Attempts dropped unjudged, by why (a reply of a model whose codebook is unknown).
    dropped: Counter[str] = field(default_factory=Counter)
    seed: int = 0
    seconds: float = 0.0
    upload: dict[str, Any] | None = None

    @property
    def verified(self) -> int:
        """The model's own attempts that verified (golden fallbacks are not counted)."""
        return self.attempts["correct"]

    def per_minute(self, seconds: float | None = None) -> float:
        elapsed = self.seconds if seconds is None else seconds
        return round(60 * self.verified / elapsed, 1) if elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "problems": self.problems,
            "lines": self.lines,
            "attempts": dict(self.attempts),
            "sources": dict(self.sources),
            "models": sorted(self.models),
            "dropped": sum(self.dropped.values()),
            "dropped_reasons": dict(self.dropped),
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "verified": self.verified,
            "verified_per_minute": self.per_minute(),
            "upload": self.upload,
        }


def write_shard(lines: Sequence[dict[str, Any]], path: Path) -> None:
    """Written under a temporary name and renamed: a cut job never leaves a short shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.part")
    with partial.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def generate_shard(
    client: NodeClient,
    *,
    domain: str,
    count: int,
    difficulty: int,
    mode: Mode,
    seed: int,
    path: Path,
    max_tokens: int,
    temperature: float,
    concurrency: int,
    codebook: Codebook | None,
    model: str | None = None,
    fallback: Fallback = "golden",
    think: int = 4,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> GenerationReport:
    """Sample one attempt per problem on the node and write the shard (see the module doc).

    `codebook` is `model`'s (the serving model's, as the caller fetched it). A reply of
    any other model (a hot swap mid-job), or every reply when `model` is not given, is
    judged and stamped with its own model's codebook, asked of the node once per model; a
    reply of a model the node no longer knows is dropped and counted in `dropped`.
    """
    started = time.monotonic()
    problems = list(
        generate_problems(domain, count=count, difficulty=difficulty, seed=seed, split="train")
    )
    schedule = schedule_for(mode, total=count)
    rng = random.Random(f"generate:{domain}:{difficulty}:{seed}")
    modes = [schedule.mode_for(i, rng) for i in range(len(problems))]

    def ask(index: int) -> Attempt:
        problem = problems[index]
        reply = client.chat(
            [{"role": "user", "content": problem.question}],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed * 1_000_003 + index,
        )
        return Attempt(problem, reply, modes[index])

    settings = RenderSettings(think_repeat=think)
    report = GenerationReport(path=path, seed=seed)
    lines: list[dict[str, Any]] = []
    codebooks = ModelCodebooks(client.model_codebook, {model: codebook} if model else None)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for done, attempt in enumerate(pool.map(ask, range(len(problems))), start=1):
            report.problems += 1
            report.models.add(attempt.reply.model)
            try:
                answering = codebooks(attempt.reply.model)
            except ModelGone:
                # Its codes' meaning is unknown: no line may be judged or stamped for it.
                report.dropped[
                    f"model {attempt.reply.model!r} answered, then left the node: "
                    "its codebook is unknown"
                ] += 1
                line, source = None, None
            else:
                line, source, kind = build_line(
                    attempt, rng=rng, settings=settings, codebook=answering, fallback=fallback
                )
                report.attempts[kind] += 1
            if line is not None and source is not None:
                lines.append(line)
                report.sources[source] += 1
            if on_progress is not None:
                rate = report.per_minute(time.monotonic() - started)
                on_progress(done, len(problems), f"{report.verified} verified, {rate}/min")
    report.lines = len(lines)
    if lines:
        write_shard(lines, path)
    report.seconds = time.monotonic() - started
    return report


def upload_shard(
    path: Path,
    *,
    gateway_url: str,
    token: str | None,
    priority: str = "low",
    name: str | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """POST the shard to the gateway's dataset upload, which validates, stores and queues it
    on train-<priority>; returns the gateway's answer (sha256, lines, job_id …)."""
    url = gateway_url.rstrip("/") + "/datasets"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"priority": priority, "name": name or path.name}
    try:
        with path.open("rb") as data:
            response = httpx.post(
                url,
                params=params,
                headers=headers,
                files={"file": (path.name, data, "application/jsonl")},
                timeout=timeout,
            )
    except httpx.HTTPError as err:
        raise UploadError(
            f"the gateway at {gateway_url} did not take {path} ({err}); check R3_GATEWAY_URL. "
            "The shard stays on disk: drop it in the trainer host's inbox instead."
        ) from None
    if response.status_code >= 400:
        raise UploadError(
            f"the gateway refused {path}: HTTP {response.status_code}: {response.text[:300]}"
            + (
                " (set R3_NODE_TOKEN to the gateway's R3_NODE_TOKEN)"
                if response.status_code in (401, 403)
                else ""
            )
        )
    answer = response.json()
    assert isinstance(answer, dict)
    return answer
