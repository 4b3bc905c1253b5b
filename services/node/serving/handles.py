"""A request's life in the engine: the model it runs on, what is asked, its handle and events.

The engine thread owns a `Slot` per request: it turns sampled tokens into text deltas
(incremental detokenization), applies stop strings and max_tokens, and hands events to the
request's `RequestHandle`, which the caller reads synchronously or from asyncio.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from codec.codebook import Codebook
from services.node.errors import GenerationError
from services.node.serving.thinking import ThinkingMarkers, ThinkingRules, ThinkingState

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class LoadedModel:
    """One model version ready to serve: weights on the device, tokenizer, what stops it."""

    version: str
    path: Path | None
    model: Any
    tokenizer: Any
    device: torch.device
    step: int | None = None
    eos_ids: frozenset[int] = frozenset()
    markers: ThinkingMarkers | None = None
    max_positions: int | None = None
    vocab_size: int | None = None  # tokenizer entries; embedding rows past it are never sampled
    # The codebook saved beside the weights (codebook.json): what its <E###> code tokens
    # mean. None: the model carries none, and the codec's default one decodes its output.
    codebook: Codebook | None = None
    # The engine's serving state of this model (slot cache, captured steps): it lives and
    # dies with the model, so a swapped-out model's cache goes with its weights.
    runtime: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate: chat `messages` or raw `prompt_ids`, and how to sample."""

    messages: Sequence[dict[str, str]] | None = None
    prompt_ids: Sequence[int] | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    thinking: ThinkingRules | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    message: str | None = None  # why, when reason is "error"


StreamEvent = TextDelta | Finished


@dataclass(frozen=True)
class Completion:
    """A whole completion, as `RequestHandle.result()` returns it."""

    version: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    batch_size: int


class RequestHandle:
    """The caller's side of one request: its events, its model version, cancellation."""

    _ids = itertools.count(1)

    def __init__(
        self,
        version: str,
        prompt_tokens: int,
        loop: asyncio.AbstractEventLoop | None,
        codebook: Codebook | None = None,
    ) -> None:
        self.id = next(self._ids)
        self.version = version
        # The answering model's codebook, kept here because the slot lets go of the model
        # when it finishes, and a swap may have made another model active by then.
        self.codebook = codebook
        self.prompt_tokens = prompt_tokens
        self.batch_size = 0  # set when its batch starts
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None  # when its first token was sampled
        self._loop = loop
        self._sync: queue.SimpleQueue[StreamEvent] = queue.SimpleQueue()
        self._async: asyncio.Queue[StreamEvent] | None = asyncio.Queue() if loop else None
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating (the client went away); the row leaves its batch at the next step."""
        self._cancelled.set()

    def _put(self, event: StreamEvent) -> None:
        if self._loop is None or self._async is None:
            self._sync.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        except RuntimeError:  # the loop closed: nobody is listening any more
            self._cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Blocking iterator over the events, ending with the `Finished` one."""
        if self._async is not None:
            raise RuntimeError("this handle was submitted with an event loop: use astream()")
        while True:
            event = self._sync.get(timeout=timeout)
            yield event
            if isinstance(event, Finished):
                return

    async def astream(self) -> AsyncIterator[StreamEvent]:
        """Async iterator over the events, ending with the `Finished` one."""
        if self._async is None:
            raise RuntimeError("this handle was submitted without an event loop: use stream()")
        while True:
            event = await self._async.get()
            yield event
            if isinstance(event, Finished):
                return

    def _completion(self, finished: Finished) -> Completion:
        if finished.reason == "error":
            raise GenerationError(finished.message or "generation failed")
        return Completion(
            version=self.version,
            text=finished.text,
            finish_reason=finished.reason,
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            batch_size=self.batch_size,
        )

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the whole completion (GenerationError if its batch failed)."""
        last = None
        for event in self.stream(timeout):
            last = event
        assert isinstance(last, Finished)
        return self._completion(last)

    async def aresult(self) -> Completion:
        last = None
        async for event in self.astream():
            last = event
        assert isinstance(last, Finished)
        return self._completion(last)


@dataclass
class Slot:
    """One request inside the engine thread: its tokens, text and stop state."""

    handle: RequestHandle
    loaded: LoadedModel
    request: GenerationRequest
    prompt: list[int]
    release: Callable[[LoadedModel], None]
    thinking: ThinkingState | None = None
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    index: int = -1  # its slot in the model's KV cache while it generates
    position: int = 0  # where the next token fed (`last`) is written in that slot
    last: int = 0  # the token sampled last, fed at the next decode step
    generated: int = 0
    text: str = ""
    emitted: int = 0
    prefix_offset: int = 0
    read_offset: int = 0
    done: bool = False

    def finish(self, reason: FinishReason, message: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        # Released before the caller hears of the end, so in_use() is exact when it does.
        self.release(self.loaded)
        # Whatever still references this slot must not keep a swapped-out model alive.
        self.loaded = None  # type: ignore[assignment]
        if reason != "error" and self.emitted < len(self.text):
            self.handle._put(TextDelta(self.text[self.emitted :]))
            self.emitted = len(self.text)
        self.handle._put(
            Finished(reason, self.text, len(self.prompt), self.generated, message=message)
        )

    def _decode_new(self) -> str:
        # Incremental detokenization: decode a short window and keep back a trailing
        # replacement char, which means a multi-byte character is still incomplete.
        tok = self.loaded.tokenizer
        prefix = str(
            tok.decode(self.tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        )
        full = str(tok.decode(self.tokens[self.prefix_offset :], skip_special_tokens=True))
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)
            return full[len(prefix) :]
        return ""

    def accept(self, token: int) -> bool:
        """Take one sampled token; True when this request is finished."""
        if self.handle.cancelled:
            self.finish("cancelled")
            return True
        self.generated += 1
        if self.handle.first_token_at is None:
            self.handle.first_token_at = time.monotonic()
        if token in self.loaded.eos_ids:
            self.finish("stop")
            return True
        self.tokens.append(token)
        if self.thinking is not None:
            self.thinking.advance(token)
        new = self._decode_new()
        if new:
            searched = len(self.text)
            self.text += new
            stops = self.request.stop
            if stops:
                longest = max(len(s) for s in stops)
                start = max(0, searched - longest + 1)
                hits = [i for i in (self.text.find(s, start) for s in stops) if i >= 0]
                if hits:
                    self.text = self.text[: min(hits)]
                    self.finish("stop")
                    return True
                # Hold back what could be the start of a stop string, so it never streams.
                safe = max(self.emitted, len(self.text) - longest + 1)
            else:
                safe = len(self.text)
            if safe > self.emitted:
                self.handle._put(TextDelta(self.text[self.emitted : safe]))
                self.emitted = safe
        if self.generated >= self.request.max_tokens:
            self.finish("length")
            return True
        return False
