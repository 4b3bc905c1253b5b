"""The node-worker's eval sets and its backend of the one scorer (`services.validation.scorer`):
the node's active model over its HTTP API."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import redis

from bus import keys
from bus.encoding import from_fields
from bus.errors import MalformedEntry
from bus.events import EvalResult
from bus.publish import Publisher
from bus.status import StatusStore
from codec.codebook import Codebook
from codec.domains import DOMAINS, default_codebook, generate, mixed_problems
from codec.evaluate import split_output
from codec.modes import Mode
from codec.problem import STOP, Problem, RenderSettings
from services.node.worker.node_client import NodeClient, Scored
from services.validation import calibration, sets
from services.validation.calibration import answer_span as answer_span
from services.validation.calibration import (
    expected_calibration_error as expected_calibration_error,
)
from services.validation.scorer import (
    Generated,
    Messages,
    ScoreItem,
    ScoreRequest,
    SetScore,
    TokenScores,
    score_set,
)
from services.validation.scorer import ModelChanged as ModelChanged
from services.validation.trend import em_trend

CODED_MODES = (Mode.ENCODED, Mode.ASSORTED)  # the render modes that write codes
BUILTIN_SEED = 20_240  # fixed: a built-in set is the same problems every time it is named
BUILTIN_PER_LEVEL = 10


class EvalSetError(ValueError):
    """An eval set name that is no validation set, no readable file and no built-in domain."""


# One prompt with its golden assistant turn: the scorer's item.
EvalItem = ScoreItem


def answer_confidence(scored: Scored, span: tuple[int, int]) -> float:
    """Probability the model gives its own answer (services.validation.calibration, the
    definition the trainer uses too): the product over the answer's tokens."""
    return calibration.answer_confidence(scored.offsets, scored.logprobs, span)


# --- eval sets -------------------------------------------------------------------------------


def _item_from_line(obj: Any, where: str) -> EvalItem:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise EvalSetError(f"{where}: not a training-format line with a 'messages' list")
    messages = obj["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise EvalSetError(f"{where}: the last message must be the golden assistant turn")
    meta = obj.get("meta") or {}
    completion = str(messages[-1]["content"])
    golden = meta.get("golden")
    if golden is None:
        parts = split_output(completion)
        if parts is None or not parts[1]:
            raise EvalSetError(f"{where}: no meta.golden and no answer after {STOP} markers")
        golden = parts[1]
    return EvalItem(
        id=str(meta.get("id", where)),
        prompt=[{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
        completion=completion,
        golden=str(golden),
        domain=str(meta.get("domain", "unknown")),
        difficulty=int(meta.get("difficulty", 0)),
    )


def items_from_jsonl(path: Path, limit: int | None = None) -> list[EvalItem]:
    """An eval set written in the training format (meta.golden/domain/difficulty if present)."""
    items: list[EvalItem] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalSetError(f"{path}:{number}: not JSON ({err.msg})") from None
            items.append(_item_from_line(obj, f"{path}:{number}"))
            if limit is not None and len(items) == limit:
                break
    if not items:
        raise EvalSetError(f"{path} holds no examples")
    return items


def items_from_problems(
    problems: Sequence[Problem], mode: Mode, codebook: Codebook | None = None
) -> list[EvalItem]:
    """Problems rendered exactly as the data generator renders them (Problem.render); codes
    are the model's `codebook` (None: the codec's default one)."""
    if mode in CODED_MODES:
        codebook = codebook if codebook is not None else default_codebook()
    else:
        codebook = None
    rng = random.Random(f"eval-render:{BUILTIN_SEED}")
    items = []
    for p in problems:
        line = p.render(mode, codebook, rng, RenderSettings())
        items.append(_item_from_line(line, p.id))
    return items


def builtin_problems(name: str, per_level: int = BUILTIN_PER_LEVEL) -> list[Problem]:
    """`<domain>` (every level), `<domain>:<level>`, or `all`: held-out problems, fixed seed."""
    domain, _, level = name.partition(":")
    if domain == "all":
        count = per_level * sum(len(d.levels) for d in DOMAINS.values())
        return list(islice(mixed_problems(count, BUILTIN_SEED, split="heldout"), count))
    if domain not in DOMAINS:
        raise EvalSetError(
            f"eval set {name!r} is no validation set, no file and no built-in domain; use a "
            f"JSONL path or one of: all, {', '.join(sorted(DOMAINS))} (optionally :<level>)"
        )
    levels = DOMAINS[domain].levels if not level else (int(level),)
    return [
        p
        for lv in levels
        for p in generate(
            domain, count=per_level, difficulty=lv, seed=BUILTIN_SEED, split="heldout"
        )
    ]


_STORED_SET = re.compile(r"(?P<domain>[a-z]+)-d(?P<level>\d+)-(?P<mode>english|canonical|encoded)")


def _stored_set(name: str, validation_dir: Path) -> Path | None:
    """A fixed validation set (services.validation.sets, `<domain>-d<level>-<mode>`), written
    on first use with that module's own seed, so the trainer and the node score the same set."""
    match = _STORED_SET.fullmatch(name)
    if match is None:
        return None
    # R3_VALIDATION_DIR, as the trainer's and the feeder's; drawn from the same seed, the
    # node's copy holds exactly the trainer's problems.
    level = int(match["level"])
    path: Path = sets.ensure_set(validation_dir, match["domain"], level, match["mode"])
    return path


def resolve_eval_set(
    name: str,
    *,
    validation_dir: Path,
    mode: Mode = Mode.ENGLISH,
    limit: int | None = None,
    codebook: Codebook | None = None,
) -> list[EvalItem]:
    """The items of `name`: a stored validation set (`arithmetic-d2-canonical`), a JSONL file
    in the training format, or a built-in held-out set (`all`, `<domain>`, `<domain>:<level>`)
    generated from a fixed seed and rendered in `mode` (codes: `codebook`, None = default)."""
    stored = _stored_set(name, validation_dir)
    if stored is not None:
        return items_from_jsonl(stored, limit)
    path = Path(name).expanduser()
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise EvalSetError(f"eval set file {path} does not exist")
        return items_from_jsonl(path, limit)
    items = items_from_problems(builtin_problems(name), mode, codebook)
    return items[:limit] if limit else items


# --- a run ---------------------------------------------------------------------------------


# Greedy and without the thinking-marker processors: a fixed set scores the model's own output,
# as the trainer's in-process scorer does, so both score one model alike.
EVAL_THINKING: dict[str, Any] = {"enabled": False}


class HttpBackend:
    """The scorer's backend over the node's HTTP API (`/v1/chat/completions`, `/v1/score`),
    `concurrency` requests in flight so the node batches them."""

    def __init__(
        self,
        client: NodeClient,
        *,
        name: str,
        concurrency: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.concurrency = max(1, concurrency)
        self.on_progress = on_progress

    def generate(self, prompts: Sequence[Messages], max_tokens: int) -> list[Generated]:
        def one(prompt: Messages) -> Generated:
            reply = self.client.chat(
                prompt, max_tokens=max_tokens, temperature=0.0, thinking=EVAL_THINKING
            )
            return Generated(reply.text, reply.model)

        out: list[Generated] = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for done, generated in enumerate(pool.map(one, prompts), start=1):
                out.append(generated)
                if self.on_progress is not None:
                    self.on_progress(done, len(prompts))
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        def one(request: ScoreRequest) -> TokenScores:
            scored = self.client.score(
                request.prompt, request.completion, end_of_turn=request.end_of_turn
            )
            return TokenScores(scored.model, scored.logprobs, scored.offsets)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, requests))


def node_scorer(node_name: str) -> str:
    """eval.result's `scorer` for this node's evaluations."""
    return f"node:{node_name}"


@dataclass(frozen=True)
class EvalReport:
    event: EvalResult
    heatmap: dict[str, Any]
    seconds: float
    samples: list[dict[str, Any]]  # the first few outputs with their verdicts, for a human

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.event.model_dump(mode="json"),
            "heatmap": self.heatmap,
            "seconds": round(self.seconds, 3),
            "samples": self.samples,
        }


def previous_ems(
    connection: redis.Redis, eval_set: str, count: int = 200, *, scorer: str | None = None
) -> list[float]:
    """EM of earlier results of `eval_set` (by `scorer` only, when given), oldest first, from
    the eval stream's tail."""
    ems: list[float] = []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = connection.xrevrange(  # type: ignore[assignment]
        keys.STREAM_EVAL, count=count
    )
    for _id, raw in reversed(entries):
        try:
            event = from_fields(raw)
        except MalformedEntry:
            continue  # a bad entry is the dead-letter readers' business, not the trend's
        if not isinstance(event, EvalResult) or event.eval_set != eval_set:
            continue
        if scorer is None or event.scorer == scorer:
            ems.append(event.fixed_eval_em)
    return ems


def evaluate_items(
    client: NodeClient,
    items: Sequence[EvalItem],
    *,
    eval_set: str,
    max_tokens: int,
    concurrency: int,
    node_name: str = "node",
    explicit_max_tokens: bool = False,
    step: int | None = None,
    train_ce: float | None = None,
    previous: Sequence[float] = (),
    on_progress: Callable[[int, int], None] | None = None,
    codebook: Codebook | None = None,
    expected_model: str | None = None,
) -> EvalReport:
    """Score every item on the node by the one scorer's rules and sum up.

    `max_tokens`: the budget's ceiling, or every answer's budget when `explicit_max_tokens`.
    `codebook`: the serving model's (None: it carries none; the default one decodes).
    Raises ModelChanged when answers came from more than one model version, or from another
    than `expected_model` (the one `codebook` belongs to).
    """
    started = time.monotonic()
    backend = HttpBackend(
        client, name=node_scorer(node_name), concurrency=concurrency, on_progress=on_progress
    )
    result = score_set(
        backend,
        items,
        ceiling=max_tokens,
        max_tokens=max_tokens if explicit_max_tokens else None,
        codebook=codebook if codebook is not None else default_codebook(),
    )
    if expected_model is not None and result.model != expected_model:
        # Judged with `expected_model`'s codebook, answers of another model mean nothing.
        raise ModelChanged(
            f"the answers came from {result.model}, not {expected_model} whose codebook "
            "decoded them (a swap)"
        )
    return report_of(
        result,
        codebook=codebook.version if codebook is not None else None,
        eval_set=eval_set,
        step=step,
        train_ce=train_ce,
        previous=previous,
        seconds=time.monotonic() - started,
    )


def report_of(
    result: SetScore,
    *,
    eval_set: str,
    step: int | None = None,
    train_ce: float | None = None,
    previous: Sequence[float] = (),
    seconds: float = 0.0,
    codebook: str | None = None,
) -> EvalReport:
    """The `eval.result` event of a scored set, with the heatmap and a few samples;
    `codebook` the version that decoded it (None: the default codebook)."""
    ce = result.ce
    event = EvalResult(
        model_id=result.model,
        eval_set=eval_set,
        scorer=result.scorer,
        max_tokens=result.max_tokens,
        step=step,
        total=result.total,
        correct=result.correct,
        parse_failures=result.parse_failures,
        fixed_eval_em=result.em,
        fixed_eval_ce=ce,
        fixed_eval_ece=result.ece,
        val_train_gap=(ce - train_ce) if ce is not None and train_ce is not None else None,
        fixed_eval_trend=em_trend(previous, result.em),  # the trainer's rule, one definition
        pattern_heatmap=result.pattern_heatmap(),
        pattern_counts=result.pattern_counts(),
        answer_ce=result.answer_ce,
        thinking_tokens=result.thinking_tokens,
        codebook=codebook,
    )
    samples = [
        {"id": a.id, "output": a.answer, **a.verdict.to_dict(), "confidence": a.confidence}
        for a in result.answers[:5]
    ]
    return EvalReport(event, result.heatmap, seconds, samples)


def train_loss(connection: redis.Redis) -> float | None:
    """The trainer's smoothed loss from the status hash, for the val−train gap."""
    status = StatusStore(connection).read()
    return status.streaming_ce if status.streaming_ce is not None else status.loss


def publish(connection: redis.Redis, report: EvalReport) -> str:
    return Publisher(connection).publish(report.event)
