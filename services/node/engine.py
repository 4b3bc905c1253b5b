"""The serving engine: dynamic batching of concurrent requests and atomic model swaps.

Requests arriving within `batch_wait_ms` of each other (up to `max_batch`) are generated
together: prompts left-padded into one batch, one prefill, then one forward pass per new
token for the whole batch, with per-request sampling (temperature, top_p, seed), stops,
max_tokens and thinking-marker rules. Rows leave the batch as they finish.

Swaps: a request captures the `LoadedModel` that is active when it is admitted and is
generated on it to the end; `swap()` changes what new requests get, atomically. A model
swapped out stays referenced while a request still holds it and is dropped (its memory
freed) when the last one ends. The engine knows nothing of HTTP or of the codec.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import DynamicCache

from services.node.errors import EngineBusy, EngineClosed, GenerationError, PromptError
from services.node.thinking import ThinkingMarkers, ThinkingRules, ThinkingState, apply_constraints

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


@dataclass
class EngineStats:
    """Counters that show batching happened (tests read them, the bench reports them)."""

    requests: int = 0
    batches: int = 0
    forward_passes: int = 0
    tokens_generated: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class RequestHandle:
    """The caller's side of one request: its events, its model version, cancellation."""

    _ids = itertools.count(1)

    def __init__(
        self,
        version: str,
        prompt_tokens: int,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.id = next(self._ids)
        self.version = version
        self.prompt_tokens = prompt_tokens
        self.batch_size = 0  # set when its batch starts
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
class _Slot:
    """One request inside the engine thread: its tokens, text and stop state."""

    handle: RequestHandle
    loaded: LoadedModel
    request: GenerationRequest
    prompt: list[int]
    release: Callable[[LoadedModel], None]
    thinking: ThinkingState | None = None
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
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
        prefix = tok.decode(
            self.tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True
        )
        full = tok.decode(self.tokens[self.prefix_offset :], skip_special_tokens=True)
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


_STOP = object()


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Engine:
    """Batched generation on the active model; `swap()` changes it for new requests only."""

    def __init__(
        self,
        initial: LoadedModel,
        *,
        max_batch: int = 32,
        batch_wait_ms: float = 5.0,
        max_queue: int = 1024,
    ) -> None:
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_queue = max_queue
        self._active = initial
        self._lock = threading.Lock()
        self._holds: dict[int, int] = {}
        self._retired: dict[int, LoadedModel] = {}
        self._pending: queue.Queue[Any] = queue.Queue()
        self._stats = EngineStats()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="node-engine", daemon=True)
        self._thread.start()

    # -- models ----------------------------------------------------------------------------

    @property
    def active(self) -> LoadedModel:
        return self._active

    def swap(self, new: LoadedModel) -> LoadedModel:
        """Make `new` the model of every request admitted from now on; returns the old one.

        Requests admitted before keep the old model to their end; it is kept alive for them
        and dropped when the last one finishes (the caller should drop its reference too).
        """
        with self._lock:
            old, self._active = self._active, new
            if self._holds.get(id(old), 0) > 0 and old is not new:
                self._retired[id(old)] = old
        return old

    def _hold(self) -> LoadedModel:
        with self._lock:
            loaded = self._active
            self._holds[id(loaded)] = self._holds.get(id(loaded), 0) + 1
            return loaded

    def _release(self, loaded: LoadedModel) -> None:
        freed = None
        with self._lock:
            left = self._holds[id(loaded)] - 1
            if left:
                self._holds[id(loaded)] = left
            else:
                del self._holds[id(loaded)]
                freed = self._retired.pop(id(loaded), None)
        if freed is not None:
            device = freed.device
            del freed, loaded
            _free_device_memory(device)

    def in_use(self) -> dict[str, int]:
        """Requests holding each model version (retired ones included)."""
        with self._lock:
            by_id = {id(self._active): self._active, **self._retired}
            return {m.version: self._holds.get(key, 0) for key, m in by_id.items()}

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The active model, kept alive across a swap until the block ends (for scoring)."""
        loaded = self._hold()
        try:
            yield loaded
        finally:
            self._release(loaded)

    # -- requests --------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        with self._lock:
            return replace(self._stats)

    def submit(
        self, request: GenerationRequest, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        """Admit a request on the active model; events arrive on the returned handle.

        Raises PromptError (bad messages, too long), EngineBusy (queue full), EngineClosed.
        With `loop`, events are delivered to that asyncio loop (use `astream()`).
        """
        if self._closed:
            raise EngineClosed("the engine is stopped; no request is taken")
        if request.max_tokens < 1:
            raise PromptError("max_tokens must be at least 1")
        if self._pending.qsize() >= self.max_queue:
            raise EngineBusy(
                f"{self._pending.qsize()} requests are waiting (R3_NODE_MAX_QUEUE="
                f"{self.max_queue}); retry in a moment."
            )
        loaded = self._hold()
        try:
            prompt = self._prompt_ids(loaded, request)
            handle = RequestHandle(loaded.version, len(prompt), loop)
            slot = _Slot(
                handle=handle, loaded=loaded, request=request, prompt=prompt, release=self._release
            )
            if request.thinking is not None and loaded.markers is not None:
                slot.thinking = ThinkingState(request.thinking, loaded.markers)
            if request.seed is not None:
                slot.generator = torch.Generator(device=loaded.device).manual_seed(request.seed)
        except BaseException:
            self._release(loaded)
            raise
        with self._lock:
            self._stats.requests += 1
        self._pending.put(slot)
        return handle

    @staticmethod
    def _prompt_ids(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
        if request.prompt_ids is not None:
            prompt = [int(t) for t in request.prompt_ids]
        elif request.messages is not None:
            try:
                prompt = list(
                    loaded.tokenizer.apply_chat_template(
                        list(request.messages), add_generation_prompt=True, tokenize=True
                    )
                )
            except Exception as exc:  # jinja's TemplateError and friends
                raise PromptError(f"the chat template refused the messages: {exc}") from exc
        else:
            raise PromptError("a request needs messages or prompt_ids")
        if not prompt:
            raise PromptError("the prompt is empty")
        limit = loaded.max_positions
        if limit is not None and len(prompt) + request.max_tokens > limit:
            raise PromptError(
                f"the prompt is {len(prompt)} tokens and max_tokens {request.max_tokens}: "
                f"together more than model {loaded.version!r}'s context of {limit} tokens; "
                "shorten the messages or lower max_tokens."
            )
        return prompt

    def close(self, timeout: float = 10.0) -> None:
        """Finish the batch under way, fail what is queued, stop the thread."""
        self._closed = True
        self._pending.put(_STOP)
        self._thread.join(timeout)

    # -- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is _STOP:
                break
            batch: list[_Slot] = [first]
            stopping = False
            # The window slides: each arrival extends it by batch_wait_s (up to 8 windows in
            # all), so a burst of clients submitting one after another lands in one batch.
            started = time.monotonic()
            deadline = started + self.batch_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._pending.get(timeout=remaining)
                        if remaining > 0
                        else self._pending.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
                deadline = min(
                    time.monotonic() + self.batch_wait_s, started + 8 * self.batch_wait_s
                )
            groups: dict[int, list[_Slot]] = {}
            for slot in batch:
                groups.setdefault(id(slot.loaded), []).append(slot)
            for group in groups.values():
                self._generate(group)
            if stopping:
                break
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.finish("error", "the node is shutting down")

    def _generate(self, slots: list[_Slot]) -> None:
        live = [s for s in slots if not s.handle.cancelled]
        for s in slots:
            if s.handle.cancelled:
                s.finish("cancelled")
        try:
            if live:
                self._decode_batch(live)
        except Exception as exc:  # a device error fails this batch, never the engine
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                reason = f"out of GPU memory in a batch of {len(live)}; retry or lower load"
            with self._lock:
                self._stats.failed_batches += 1
            for s in live:
                s.finish("error", reason)
        finally:
            for s in slots:
                s.finish("error", "the engine stopped this request")  # a no-op once finished

    @torch.inference_mode()
    def _decode_batch(self, slots: list[_Slot]) -> None:
        loaded = slots[0].loaded
        device = loaded.device
        model = loaded.model
        for s in slots:
            s.handle.batch_size = len(slots)
        with self._lock:
            self._stats.batches += 1
            self._stats.largest_batch = max(self._stats.largest_batch, len(slots))
        pad = loaded.tokenizer.pad_token_id
        pad = pad if pad is not None else min(loaded.eos_ids, default=0)
        width = max(len(s.prompt) for s in slots)
        ids = torch.full((len(slots), width), pad, dtype=torch.long)
        mask = torch.zeros((len(slots), width), dtype=torch.long)
        for row, s in enumerate(slots):
            ids[row, width - len(s.prompt) :] = torch.tensor(s.prompt)
            mask[row, width - len(s.prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        next_pos = positions[:, -1:] + 1
        alive = list(range(len(slots)))
        passes = 1
        while True:
            rows = [slots[i] for i in alive]
            tokens = self._sample(out.logits[:, -1, :], rows, loaded)
            keep = [r for r, (s, t) in enumerate(zip(rows, tokens, strict=True)) if not s.accept(t)]
            with self._lock:
                self._stats.tokens_generated += len(rows)
            if not keep:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                alive = [alive[r] for r in keep]
            step_ids = torch.tensor([[tokens[r]] for r in keep], device=device)
            mask = torch.cat([mask, mask.new_ones((len(keep), 1))], dim=-1)
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            next_pos = next_pos + 1
            passes += 1
        with self._lock:
            self._stats.forward_passes += passes

    def _sample(self, logits: torch.Tensor, rows: list[_Slot], loaded: LoadedModel) -> list[int]:
        scores = logits.float()
        if loaded.vocab_size is not None and loaded.vocab_size < scores.shape[-1]:
            scores[:, loaded.vocab_size :] = float("-inf")  # padding rows, not real tokens
        constraints = [s.thinking.constraint() if s.thinking else None for s in rows]
        if any(c is not None for c in constraints):
            apply_constraints(scores, constraints)
        greedy = scores.argmax(dim=-1)
        temps = [s.request.temperature for s in rows]
        if all(t == 0 for t in temps):
            return [int(t) for t in greedy.tolist()]
        device = scores.device
        temp = torch.tensor([max(t, 1e-5) for t in temps], device=device).unsqueeze(1)
        scores = scores / temp
        top_p = [s.request.top_p for s in rows]
        if any(p < 1.0 for p in top_p):
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
            cut = before > torch.tensor(top_p, device=device).unsqueeze(1)
            ordered = ordered.masked_fill(cut, float("-inf"))
            scores = torch.empty_like(scores).scatter_(-1, order, ordered)
        probs = scores.softmax(dim=-1)
        sampled = torch.multinomial(probs, 1).squeeze(1)
        for r, s in enumerate(rows):
            if s.generator is not None:
                # A seeded request draws from its own generator, whatever shares its batch.
                sampled[r] = torch.multinomial(probs[r], 1, generator=s.generator)[0]
        chosen = torch.where(torch.tensor([t == 0 for t in temps], device=device), greedy, sampled)
        return [int(t) for t in chosen.tolist()]
