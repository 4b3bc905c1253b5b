"""Score a fixed evaluation set on the node's active model: EM, CE, ECE and the pattern heatmap."""

from __future__ import annotations

import importlib
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from codec.domains import DOMAINS, default_codebook, generate, mixed_problems
from codec.evaluate import EvalResult as Verdict
from codec.evaluate import Scoreboard, aggregate, evaluate_output, split_output
from codec.modes import Mode
from codec.problem import STOP, Problem, RenderSettings
from services.node.node_client import NodeClient, Scored
from services.validation import calibration
from services.validation.calibration import answer_span, expected_calibration_error
from services.validation.trend import em_trend

BUILTIN_SEED = 20_240  # fixed: a built-in set is the same problems every time it is named
BUILTIN_PER_LEVEL = 10


class EvalSetError(ValueError):
    """An eval set name that is no validation set, no readable file and no built-in domain."""


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt with its golden assistant turn (reasoning and answer)."""

    id: str
    prompt: list[dict[str, str]]  # the messages before the golden assistant turn
    completion: str  # the golden assistant content, scored by teacher forcing for CE
    golden: str  # the golden answer alone, compared canonically
    domain: str
    difficulty: int


# --- the numbers -----------------------------------------------------------------------------


def mean_cross_entropy(scores: Sequence[Scored]) -> float | None:
    """Token-weighted mean negative log-likelihood (nats/token) over every scored token,
    as the trainer's loss is, so a long golden answer weighs more than a short one."""
    tokens = sum(len(s.logprobs) for s in scores)
    if tokens == 0:
        return None
    return -sum(sum(s.logprobs) for s in scores) / tokens


def answer_confidence(scored: Scored, span: tuple[int, int]) -> float:
    """Probability the model gives its own answer (services.validation.calibration, the
    definition the trainer uses too): the product over the answer's tokens."""
    return calibration.answer_confidence(scored.offsets, scored.logprobs, span)


def heatmap_grid(board: Scoreboard) -> dict[str, dict[str, float]]:
    """The event's heatmap: domain → difficulty (as text) → exact match."""
    grid: dict[str, dict[str, float]] = {}
    for (domain, level), cell in sorted(board.cells.items()):
        grid.setdefault(domain, {})[str(level)] = round(cell.accuracy, 4)
    return grid


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


def items_from_problems(problems: Sequence[Problem], mode: Mode) -> list[EvalItem]:
    """Problems rendered exactly as the data generator renders them (Problem.render)."""
    codebook = default_codebook() if mode is Mode.ENCODED else None
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


def _stored_set(name: str, data_dir: Path) -> Path | None:
    """A fixed validation set (services.validation.sets, `<domain>-d<level>-<mode>`), written
    on first use with that module's own seed, so the trainer and the node score the same set."""
    match = _STORED_SET.fullmatch(name)
    if match is None:
        return None
    try:
        sets = importlib.import_module("services.validation.sets")
    except ModuleNotFoundError:
        return None
    # The trainer's and the feeder's default root; drawn from the same seed, the node's copy
    # holds exactly the trainer's problems.
    root = data_dir / "validation"
    path: Path = sets.ensure_set(root, match["domain"], int(match["level"]), match["mode"])
    return path


def resolve_eval_set(
    name: str, *, data_dir: Path, mode: Mode = Mode.ENGLISH, limit: int | None = None
) -> list[EvalItem]:
    """The items of `name`: a stored validation set (`arithmetic-d2-canonical`), a JSONL file
    in the training format, or a built-in held-out set (`all`, `<domain>`, `<domain>:<level>`)
    generated from a fixed seed and rendered in `mode`."""
    stored = _stored_set(name, data_dir)
    if stored is not None:
        return items_from_jsonl(stored, limit)
    path = Path(name).expanduser()
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise EvalSetError(f"eval set file {path} does not exist")
        return items_from_jsonl(path, limit)
    items = items_from_problems(builtin_problems(name), mode)
    return items[:limit] if limit else items


# --- a run -----------------------------------------------------------------------------------


@dataclass
class ItemOutcome:
    item: EvalItem
    output: str
    verdict: Verdict
    golden_scored: Scored
    confidence: float | None  # None: no answer to take a probability of
    models: set[str] = field(default_factory=set)


class ModelChanged(RuntimeError):
    """The node swapped models in the middle of an evaluation."""


def _score_item(client: NodeClient, item: EvalItem, max_tokens: int) -> ItemOutcome:
    reply = client.chat(item.prompt, max_tokens=max_tokens, temperature=0.0)
    codebook = default_codebook()
    verdict = evaluate_output(reply.text, item.golden, codebook=codebook)
    golden_scored = client.score(item.prompt, item.completion)
    models = {reply.model, golden_scored.model}
    confidence = None
    span = answer_span(reply.text)
    if span is not None:
        own = client.score(item.prompt, reply.text, end_of_turn=False)
        models.add(own.model)
        confidence = answer_confidence(own, span)
    return ItemOutcome(item, reply.text, verdict, golden_scored, confidence, models)


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


def previous_ems(connection: redis.Redis, eval_set: str, count: int = 200) -> list[float]:
    """EM of earlier results of `eval_set`, oldest first, from the eval stream's tail."""
    ems: list[float] = []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = connection.xrevrange(  # type: ignore[assignment]
        keys.STREAM_EVAL, count=count
    )
    for _id, raw in reversed(entries):
        try:
            event = from_fields(raw)
        except MalformedEntry:
            continue  # a bad entry is the dead-letter readers' business, not the trend's
        if isinstance(event, EvalResult) and event.eval_set == eval_set:
            ems.append(event.fixed_eval_em)
    return ems


def evaluate_items(
    client: NodeClient,
    items: Sequence[EvalItem],
    *,
    eval_set: str,
    max_tokens: int,
    concurrency: int,
    step: int | None = None,
    train_ce: float | None = None,
    previous: Sequence[float] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run every item on the node (concurrently, so the node batches them) and sum up.

    Raises ModelChanged when answers came from more than one model version.
    """
    started = time.monotonic()
    outcomes: list[ItemOutcome] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for done, outcome in enumerate(
            pool.map(lambda it: _score_item(client, it, max_tokens), items), start=1
        ):
            outcomes.append(outcome)
            if on_progress is not None:
                on_progress(done, len(items))
    return summarize(
        outcomes,
        eval_set=eval_set,
        step=step,
        train_ce=train_ce,
        previous=previous,
        seconds=time.monotonic() - started,
    )


def summarize(
    outcomes: Sequence[ItemOutcome],
    *,
    eval_set: str,
    step: int | None = None,
    train_ce: float | None = None,
    previous: Sequence[float] = (),
    seconds: float = 0.0,
) -> EvalReport:
    """The figures of a run: EM over every item (a parse failure counts as not correct), CE
    over the golden turns' tokens, ECE over the items whose output had an answer."""
    models = set().union(*(o.models for o in outcomes)) if outcomes else set()
    if len(models) > 1:
        raise ModelChanged(f"answers came from several model versions: {', '.join(sorted(models))}")
    board = aggregate((o.item.domain, o.item.difficulty, o.verdict) for o in outcomes)
    total = board.total()
    em = total.correct / total.total if total.total else 0.0
    calibrated = [o for o in outcomes if o.confidence is not None]
    ece = expected_calibration_error(
        [o.confidence for o in calibrated if o.confidence is not None],
        [o.verdict.match for o in calibrated],
    )
    ce = mean_cross_entropy([o.golden_scored for o in outcomes])
    event = EvalResult(
        model_id=next(iter(models)) if models else "",
        eval_set=eval_set,
        step=step,
        total=total.total,
        correct=total.correct,
        parse_failures=total.parse_failed,
        fixed_eval_em=em,
        fixed_eval_ce=ce,
        fixed_eval_ece=ece,
        val_train_gap=(ce - train_ce) if ce is not None and train_ce is not None else None,
        fixed_eval_trend=em_trend(previous, em),  # the trainer's rule, one definition
        pattern_heatmap=heatmap_grid(board),
    )
    samples = [
        {"id": o.item.id, "output": o.output, **o.verdict.to_dict(), "confidence": o.confidence}
        for o in outcomes[:5]
    ]
    return EvalReport(event, board.heatmap(), seconds, samples)


def train_loss(connection: redis.Redis) -> float | None:
    """The trainer's smoothed loss from the status hash, for the val−train gap."""
    status = StatusStore(connection).read()
    return status.streaming_ce if status.streaming_ce is not None else status.loss


def publish(connection: redis.Redis, report: EvalReport) -> str:
    return Publisher(connection).publish(report.event)
