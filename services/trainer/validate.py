"""Check a training file line by line before any step, and stream its accepted examples."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import IO, Any

import numpy as np

from codec.codebook import CODE
from services.dataset_store import json_line_problem
from services.trainer.config import TrainerSettings
from services.trainer.dataset_reader import DataCursor, RawLine, check_file, read_lines
from services.trainer.errors import DataChangedError, DataFileError, RejectThresholdError
from services.trainer.tokenize import ChatTokenizer, ExampleRejected, Message

THINK = "🤔"
STOP = "🛑"
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content"}
FIRST_REJECTS_SHOWN = 20
# Lines per task sent to a worker process, and tasks in flight per worker: large enough to
# amortize pickling, small enough that memory stays a few MB whatever the file size.
WORKER_BATCH = 64
IN_FLIGHT_PER_WORKER = 3

_THINK_RUN = re.compile(f"{THINK}+")
_STOP_RUN = re.compile(f"{STOP}+")
# A codebook code (codec.codebook): assistant text holding one makes the run add code tokens.
# A line's codes: None (its assistant text holds no code), UNSTAMPED (codes, no
# meta.codebook: taken to use the run's codebook) or the meta.codebook version it names.
UNSTAMPED = ""


@dataclass(frozen=True, slots=True, order=True)
class ExampleId:
    """Stable identity of an example: its line, that line's byte offset, and its split piece."""

    line: int
    offset: int
    part: int = 0


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    id: ExampleId
    input_ids: np.ndarray  # int32
    assistant_mask: np.ndarray  # bool: the tokens the loss is taken on
    next_offset: int  # byte offset of the line after this example's: the cursor past it

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def loss_tokens(self) -> int:
        return int(self.assistant_mask.sum())


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    offset: int
    kind: str  # utf8 json schema thinking length special template duplicate line_bytes
    reason: str


class _Reject(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def check_thinking(content: str, *, open_count: int, stop_min: int, stop_max: int) -> str | None:
    """Why `content` does not follow 🤔×open_count, reasoning, 🛑×(stop_min..stop_max), answer."""
    opens = list(_THINK_RUN.finditer(content))
    stops = list(_STOP_RUN.finditer(content))
    if not opens:
        return f"no reasoning: it does not start with {THINK * open_count}"
    if content[: opens[0].start()].strip():
        return f"text before the {THINK} opening; the content must start with it"
    if len(opens) > 1:
        return f"{THINK} appears in {len(opens)} places; open the reasoning once, at the start"
    opened = len(opens[0].group())
    if opened != open_count:
        return f"opens with {opened} {THINK}, expected {open_count} (R3_THINK_OPEN_COUNT)"
    if not stops:
        return f"the reasoning is never closed: no {STOP} after the {THINK} opening"
    if len(stops) > 1:
        return f"{STOP} appears in {len(stops)} places; close the reasoning once, then answer"
    closed = len(stops[0].group())
    if not stop_min <= closed <= stop_max:
        return f"closes with {closed} {STOP}, expected {stop_min} to {stop_max}"
    if not content[stops[0].end() :].strip():
        return f"no answer after the {STOP} markers"
    return None


def _check_meta(obj: dict[str, Any]) -> str | None:
    meta = obj.get("meta")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise _Reject("schema", f"'meta' is {type(meta).__name__}, must be an object")
    stamp = meta.get("codebook")
    if stamp is not None and (not isinstance(stamp, str) or not stamp.strip()):
        raise _Reject(
            "schema",
            f"meta.codebook {stamp!r} must be a codebook version string (like cb-0123456789ab, "
            "Codebook.version); leave it out when the reasoning holds no codes",
        )
    ident = meta.get("id")
    if ident is None:
        return None
    if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
        raise _Reject("schema", f"meta.id {ident!r} must be a non-empty string or an integer")
    return f"{type(ident).__name__}:{ident}"


def check_conversation(obj: object, settings: TrainerSettings) -> tuple[list[Message], str | None]:
    """The messages of one parsed line and its meta.id key, or _Reject with the first problem."""
    if not isinstance(obj, dict):
        raise _Reject("schema", f"the line is a JSON {type(obj).__name__}, not an object")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject("schema", "'messages' must be a non-empty list of {role, content} objects")
    expected = "user"
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _Reject("schema", f"{where} is {type(message).__name__}, must be an object")
        extra = set(message) - MESSAGE_KEYS
        if extra:
            raise _Reject(
                "schema",
                f"{where} has key(s) {', '.join(sorted(extra))}; only role and content are "
                "trained on (put reasoning inside content, between the markers)",
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _Reject("schema", f"{where}.role is {role!r}, must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            kind = type(content).__name__
            raise _Reject("schema", f"{where}.content must be a string, not {kind}")
        if role == "system":
            if index != 0:
                raise _Reject("schema", f"{where}: a system message may only come first")
            continue
        if role != expected:
            raise _Reject("schema", f"{where}.role is {role}, expected {expected}: turns alternate")
        if not content.strip():
            raise _Reject("schema", f"{where}.content ({role}) is empty")
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != "assistant":
        raise _Reject("schema", "the last message must be an assistant turn (the one trained on)")
    if settings.thinking_markers != "ignore":
        last = len(messages) - 1
        for index, message in enumerate(messages):
            content = message["content"]
            if message["role"] != "assistant":
                continue
            required = settings.thinking_markers == "require" and index == last
            if not required and THINK not in content and STOP not in content:
                continue
            problem = check_thinking(
                content,
                open_count=settings.think_open_count,
                stop_min=settings.stop_min_count,
                stop_max=settings.stop_max_count,
            )
            if problem:
                raise _Reject("thinking", f"messages[{index}] (assistant): {problem}")
    return messages, _check_meta(obj)


def id_hash(key: str) -> int:
    """8 bytes of BLAKE2b: a million ids collide with probability about 3e-8."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


LineResult = tuple[list[TokenizedExample] | Rejection, int | None, str | None]


def line_codes(obj: dict[str, Any], messages: Sequence[Message]) -> str | None:
    """None when no assistant turn holds a code; else the line's meta.codebook or UNSTAMPED."""
    if not any(m["role"] == "assistant" and CODE.search(m["content"]) for m in messages):
        return None
    meta = obj.get("meta")
    stamp = meta.get("codebook") if isinstance(meta, dict) else None
    return stamp if isinstance(stamp, str) else UNSTAMPED


def process_line(raw: RawLine, chat: ChatTokenizer, settings: TrainerSettings) -> LineResult:
    """Accepted examples (several when split) or a rejection, the meta.id hash if any, and
    the line's codes (`line_codes`)."""
    try:
        if raw.data is None:
            raise _Reject(
                "line_bytes",
                f"the line is {raw.size} bytes, over R3_MAX_LINE_BYTES={settings.max_line_bytes}",
            )
        try:
            text = raw.data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _Reject("utf8", f"invalid UTF-8 at byte {err.start} of the line") from None
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as err:
            # The same words as at every entry point (dataset_store): deep nesting and
            # over-long integers are bad lines too, never a crash of the whole job.
            raise _Reject("json", f"not valid JSON: {json_line_problem(err)}") from None
        messages, key = check_conversation(obj, settings)
        codes = line_codes(obj, messages)
        try:
            pieces = chat.encode_within(
                messages, settings.max_length, split=settings.overlong == "split"
            )
        except ExampleRejected as err:
            raise _Reject(err.kind, str(err)) from None
        except Exception as err:
            # A template may raise on content it rejects (raise_exception in Jinja): that is
            # this line's problem, reported with its number, not a crash of the whole job.
            raise _Reject(
                "template", f"the chat template failed: {type(err).__name__}: {err}"
            ) from None
    except _Reject as rej:
        return Rejection(raw.line, raw.offset, rej.kind, rej.reason), None, None
    examples = [
        TokenizedExample(
            ExampleId(raw.line, raw.offset, part), p.input_ids, p.assistant_mask, raw.next_offset
        )
        for part, p in enumerate(pieces)
    ]
    return examples, (id_hash(key) if key is not None else None), codes


# -- worker processes: same function, a bounded number of batches in flight ------------------

_worker_state: tuple[ChatTokenizer, TrainerSettings] | None = None


def _worker_init(chat_pickle: bytes, settings: TrainerSettings) -> None:
    # A worker only tokenizes: transformers without torch costs ~70 MB of RSS instead of
    # ~300 MB, so it is told before the tokenizer is unpickled (which imports transformers).
    os.environ["USE_TORCH"] = "0"
    # Ctrl-C in a terminal reaches the whole process group: the trainer stops after its
    # step and ends the pool itself; a worker killed by the same keypress would break it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    global _worker_state
    _worker_state = (pickle.loads(chat_pickle), settings)


def _worker_batch(lines: list[RawLine]) -> list[tuple[RawLine, LineResult]]:
    assert _worker_state is not None
    chat, settings = _worker_state
    return [(raw, process_line(raw, chat, settings)) for raw in lines]


def _batches(lines: Iterable[RawLine], size: int) -> Iterator[list[RawLine]]:
    batch: list[RawLine] = []
    for raw in lines:
        batch.append(raw)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _processed(
    lines: Iterable[RawLine], chat: ChatTokenizer, settings: TrainerSettings, workers: int
) -> Iterator[tuple[RawLine, LineResult]]:
    if workers <= 0:
        for raw in lines:
            yield raw, process_line(raw, chat, settings)
        return
    # spawn, not fork: a forked child inherits the tokenizers' thread pool in an unknown state.
    context = multiprocessing.get_context("spawn")
    pool: Pool = context.Pool(
        workers, initializer=_worker_init, initargs=(pickle.dumps(chat), settings)
    )
    try:
        # Pool.imap would read the whole input ahead; a window of pending batches does not.
        pending: deque[AsyncResult[list[tuple[RawLine, LineResult]]]] = deque()
        for batch in _batches(lines, WORKER_BATCH):
            pending.append(pool.apply_async(_worker_batch, (batch,)))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


# -- the validation pass ---------------------------------------------------------------------


@dataclass
class ValidationReport:
    """What one pass over a file found; offsets of rejected lines let training skip them."""

    path: Path
    lines: int = 0  # non-blank lines: the file's examples before splitting
    blank_lines: int = 0
    accepted_lines: int = 0
    examples: int = 0  # accepted examples after splitting
    split_lines: int = 0  # accepted lines that became several examples
    rejected: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    longest: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    first_rejects: list[Rejection] = field(default_factory=list)
    rejected_offsets: array[int] = field(default_factory=lambda: array("q"))
    rejects_path: Path | None = None
    coded_lines: int = 0  # accepted lines whose assistant text holds <E###> codes
    # meta.codebook versions of the accepted coded lines, and how many lines name each;
    # coded lines without one are coded_lines - sum(codebooks.values())
    codebooks: Counter[str] = field(default_factory=Counter)

    @property
    def unstamped_lines(self) -> int:
        """Accepted lines with codes but no meta.codebook."""
        return self.coded_lines - sum(self.codebooks.values())

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.lines if self.lines else 0.0

    def check_threshold(self, threshold: float) -> None:
        """Raise RejectThresholdError when the reject rate is above `threshold`."""
        if self.reject_rate > threshold:
            raise RejectThresholdError(
                self.path,
                rejected=self.rejected,
                lines=self.lines,
                threshold=threshold,
                first=[(r.line, r.reason) for r in self.first_rejects[:5]],
                rejects_path=self.rejects_path,
            )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data; rejected offsets are left out (see the rejects file)."""
        return {
            "path": str(self.path),
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "accepted_lines": self.accepted_lines,
            "examples": self.examples,
            "split_lines": self.split_lines,
            "rejected": self.rejected,
            "reject_rate": self.reject_rate,
            "rejects_by_kind": dict(self.kinds),
            "first_rejects": [
                {"line": r.line, "offset": r.offset, "kind": r.kind, "reason": r.reason}
                for r in self.first_rejects
            ],
            "rejects_path": str(self.rejects_path) if self.rejects_path else None,
            "coded_lines": self.coded_lines,
            "codebooks": dict(self.codebooks),
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "longest_example_tokens": self.longest,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }


def _write_reject(out: IO[str], raw: RawLine, rejection: Rejection) -> None:
    record: dict[str, Any] = {
        "line": rejection.line,
        "offset": rejection.offset,
        "kind": rejection.kind,
        "reason": rejection.reason,
    }
    if raw.data is None:
        record["text"] = None  # too long to keep; the offset finds it in the original file
    else:
        try:
            record["text"] = raw.data.decode("utf-8")
        except UnicodeDecodeError:
            record["text_base64"] = base64.b64encode(raw.data).decode("ascii")
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def validate_file(
    path: Path,
    chat: ChatTokenizer,
    settings: TrainerSettings,
    *,
    rejects_path: Path | None = None,
    workers: int = 0,
    on_progress: Callable[[ValidationReport], None] | None = None,
    progress_every: int = 10_000,
) -> ValidationReport:
    """One streaming pass over `path`: every line parsed, checked and tokenized.

    Rejected lines go to `rejects_path` (JSONL: line, offset, kind, reason and the original
    text). Raises DataFileError for a file that is not text or has no examples, and
    RejectThresholdError (after writing the rejects) when the reject rate passes
    R3_REJECT_THRESHOLD. Memory: one line at a time plus the duplicate-id map, about 100 bytes
    per line with a meta.id (a dict of 8-byte hashes to first line: ~100 MB for a million).
    `on_progress` gets the report so far every `progress_every` lines (e.g. for the status hash).
    """
    started = time.perf_counter()
    check_file(path)
    report = ValidationReport(path=path, rejects_path=rejects_path)
    seen: dict[int, int] = {}
    out: IO[str] | None = None
    if rejects_path is not None:
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
        out = rejects_path.open("w", encoding="utf-8")
    try:
        lines = read_lines(path, max_line_bytes=settings.max_line_bytes)
        for done, (raw, (result, key, codes)) in enumerate(
            _processed(_counted(lines, report), chat, settings, workers), start=1
        ):
            if on_progress is not None and done % progress_every == 0:
                report.seconds = time.perf_counter() - started
                on_progress(report)
            if key is not None and not isinstance(result, Rejection):
                first = seen.setdefault(key, raw.line)
                if first != raw.line:
                    result = Rejection(
                        raw.line,
                        raw.offset,
                        "duplicate",
                        f"meta.id repeats the one of line {first}; ids must be unique in a file",
                    )
            if isinstance(result, Rejection):
                report.rejected += 1
                report.kinds[result.kind] += 1
                report.rejected_offsets.append(raw.offset)
                if len(report.first_rejects) < FIRST_REJECTS_SHOWN:
                    report.first_rejects.append(result)
                if out is not None:
                    _write_reject(out, raw, result)
                continue
            report.accepted_lines += 1
            if codes is not None:
                report.coded_lines += 1
                if codes != UNSTAMPED:
                    report.codebooks[codes] += 1
            report.examples += len(result)
            report.split_lines += len(result) > 1
            for example in result:
                report.tokens += example.length
                report.loss_tokens += example.loss_tokens
                report.longest = max(report.longest, example.length)
    finally:
        if out is not None:
            out.close()
    report.seconds = time.perf_counter() - started
    if report.lines == 0:
        raise DataFileError(
            path, "the file has only blank lines", "a training file holds one JSON object a line"
        )
    report.check_threshold(settings.reject_threshold)
    if report.examples == 0:
        raise DataFileError(path, "no line was accepted", f"see the rejects in {rejects_path}")
    return report


def _counted(lines: Iterable[RawLine], report: ValidationReport) -> Iterator[RawLine]:
    # Blank lines are no examples and no rejects: counted here, never sent to a worker.
    for raw in lines:
        report.bytes_read = raw.next_offset
        if raw.blank:
            report.blank_lines += 1
            continue
        report.lines += 1
        yield raw


def training_examples(
    path: Path,
    chat: ChatTokenizer,
    settings: TrainerSettings,
    *,
    rejected_offsets: Sequence[int] = (),
    start: DataCursor | None = None,
    workers: int = 0,
) -> Iterator[TokenizedExample]:
    """The accepted examples of a validated file, in file order, from the line at `start`.

    `rejected_offsets` (from `ValidationReport`) are skipped, duplicates included, so a
    resumed reader that never saw the earlier lines skips exactly what validation rejected.
    A line validation accepted but that is now rejected means the file changed: DataChangedError.
    """
    skip = set(rejected_offsets)
    lines = (
        raw
        for raw in read_lines(path, start or DataCursor(), max_line_bytes=settings.max_line_bytes)
        if not raw.blank and raw.offset not in skip
    )
    for raw, (result, _key, _codes) in _processed(lines, chat, settings, workers):
        if isinstance(result, Rejection):
            raise DataChangedError(
                f"{path}:{raw.line}: validation accepted this line but it is now rejected "
                f"({result.reason}); the file changed since it was validated. Queue it again."
            )
        yield from result
