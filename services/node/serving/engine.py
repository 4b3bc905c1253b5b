"""The serving engine: continuous batching of concurrent requests and atomic model swaps.

Requests arriving within `batch_wait_ms` of each other (up to `max_batch`) start together:
prompts left-padded into one prefill, then one forward pass per new token for the whole
batch, with per-request sampling (temperature, top_p, seed), stops, max_tokens and
thinking-marker rules. Rows leave the batch as they finish, and requests for the same model
that arrive meanwhile join the running batch after their own prefill (continuous batching),
so a newcomer never waits for a long generation to end.

Swaps: a request captures the `LoadedModel` that is active when it is admitted and is
generated on it to the end; `swap()` changes what new requests get, atomically. Each model
has its own running batch and the batches step in turn, so right after a swap the new
model's requests start at once while the old model's batch drains. A model
swapped out stays referenced while a request still holds it and is dropped (its memory
freed) when the last one ends. The engine knows nothing of HTTP or of the codec.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from services.node.errors import EngineBusy, EngineClosed, PromptError
from services.node.serving.decode_graphs import DecodeStep
from services.node.serving.handles import (
    Completion,
    Finished,
    FinishReason,
    GenerationRequest,
    LoadedModel,
    RequestHandle,
    Slot,
    StreamEvent,
    TextDelta,
)
from services.node.serving.kv import SlotCache, prefill, use_slot_attention
from services.node.serving.thinking import ThinkingState, apply_constraints

__all__ = [
    "Completion",
    "Engine",
    "EngineStats",
    "FinishReason",
    "Finished",
    "GenerationRequest",
    "LoadedModel",
    "RequestHandle",
    "StreamEvent",
    "TextDelta",
]


@dataclass
class EngineStats:
    """Counters that show batching happened (tests read them, the bench reports them)."""

    requests: int = 0
    batches: int = 0
    forward_passes: int = 0
    tokens_generated: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    joined: int = 0  # requests that joined a batch already running


_STOP = object()


@dataclass
class _Run:
    """One model's running batch: its rows (by cache slot) and those admitted, not prefilled."""

    loaded: LoadedModel
    rows: list[Slot] = field(default_factory=list)
    new: list[Slot] = field(default_factory=list)


@dataclass
class _Serving:
    """What the engine keeps per model: its slot cache and its (captured) decode step."""

    cache: SlotCache
    step: DecodeStep


# Prompt tokens prefilled in one forward pass at most (newcomers beyond wait a step).
PREFILL_TOKENS = 8192


def free_device_memory(device: torch.device) -> None:
    """Collect dropped models and give their device memory back (the node's one way to)."""
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
        cuda_graphs: bool = True,
    ) -> None:
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_queue = max_queue
        self._active = initial
        self._lock = threading.Lock()
        self._holds: dict[int, int] = {}
        self._retired: dict[int, LoadedModel] = {}
        self._pending: queue.Queue[Any] = queue.Queue()
        # Taken from the queue by a running batch but not its model's (or the stop marker):
        # served first by the next batch.
        self._deferred: collections.deque[Any] = collections.deque()
        self._stats = EngineStats()
        self._closed = False
        self._drain_until = float("inf")
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
            free_device_memory(device)

    def in_use(self) -> dict[str, int]:
        """Requests holding each model version (retired ones included)."""
        with self._lock:
            by_id = {id(self._active): self._active, **self._retired}
            return {m.version: self._holds.get(key, 0) for key, m in by_id.items()}

    def loaded(self, version: str) -> LoadedModel | None:
        """The model of `version` this engine holds: the active one, else one still finishing
        requests after a swap (what those requests are answered with); None when neither."""
        with self._lock:
            if self._active.version == version:
                return self._active
            for model in reversed(self._retired.values()):  # the newest first (a reload)
                if model.version == version:
                    return model
        return None

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
        waiting = self._pending.qsize() + len(self._deferred)
        if waiting >= self.max_queue:
            raise EngineBusy(
                f"{waiting} requests are waiting (R3_NODE_MAX_QUEUE="
                f"{self.max_queue}); retry in a moment."
            )
        loaded = self._hold()
        try:
            prompt = self._prompt_ids(loaded, request)
            handle = RequestHandle(loaded.version, len(prompt), loop, codebook=loaded.codebook)
            slot = Slot(
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
                        list(request.messages),
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=False,
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
        """Stop: fail what is queued, let the rows generating finish for up to `timeout`
        seconds, then end them too (an error saying the node is shutting down)."""
        self._drain_until = time.monotonic() + timeout
        self._closed = True
        self._pending.put(_STOP)
        self._thread.join(timeout + 5.0)

    # -- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        # One running batch per model: after a swap the new model's requests start at once,
        # stepping in turn with the old model's batch until that one drains.
        runs: dict[int, _Run] = {}
        stopping = False
        while True:
            if not runs:
                if stopping:
                    break
                first = self._deferred.popleft() if self._deferred else self._pending.get()
                if first is _STOP:
                    break
                stopping = self._gather(runs, first)
                del first  # a finished request must not keep its model alive from here
            elif not stopping:
                stopping = self._take_waiting(runs)
            if stopping and time.monotonic() > self._drain_until:
                for run in runs.values():
                    self._end(run, "the node is shutting down")
                runs.clear()
                break
            for key in list(runs):
                if self._advance(runs[key]):
                    device = runs[key].loaded.device
                    retired = runs[key].loaded is not self._active
                    del runs[key]
                    if retired:
                        # _release emptied the cache while this run still held the old
                        # weights; now that it is gone, give their memory back for real.
                        free_device_memory(device)
        self._drain()

    def _place(self, runs: dict[int, _Run], slot: Slot) -> bool:
        """Add `slot` to its model's run; False when that run is full."""
        if slot.handle.cancelled:
            slot.finish("cancelled")
            return True
        run = runs.get(id(slot.loaded))
        if run is None:
            run = runs[id(slot.loaded)] = _Run(slot.loaded)
        if len(run.rows) + len(run.new) >= self.max_batch:
            return False
        run.new.append(slot)
        return True

    def _gather(self, runs: dict[int, _Run], first: Slot) -> bool:
        """Start from idle: wait a short window for company. True when asked to stop."""
        self._place(runs, first)
        # The window slides: each arrival extends it by batch_wait_s (up to 8 windows in
        # all), so a burst of clients submitting one after another lands in one batch.
        started = time.monotonic()
        deadline = started + self.batch_wait_s
        while sum(len(r.new) for r in runs.values()) < self.max_batch:
            if self._deferred:
                item = self._deferred.popleft()
            else:
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
                return True
            if not self._place(runs, item):
                self._deferred.appendleft(item)
                break
            deadline = min(time.monotonic() + self.batch_wait_s, started + 8 * self.batch_wait_s)
        return False

    def _take_waiting(self, runs: dict[int, _Run]) -> bool:
        """Place every waiting request that fits, without blocking. True when asked to stop."""
        full: list[Any] = []
        stop = False
        while True:
            if self._deferred:
                item = self._deferred.popleft()
            else:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            if not self._place(runs, item):
                full.append(item)
        self._deferred.extendleft(reversed(full))  # first come, first placed next time
        return stop

    def _drain(self) -> None:
        while self._deferred:
            item = self._deferred.popleft()
            if item is not _STOP:
                item.finish("error", "the node is shutting down")
        while True:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.finish("error", "the node is shutting down")

    def _advance(self, run: _Run) -> bool:
        """One step of one model's batch; True when it has no rows left."""
        try:
            return self._step(run)
        except Exception as exc:  # a device error fails this batch, never the engine
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                size = len(run.rows) + len(run.new)
                reason = f"out of GPU memory in a batch of {size}; retry or lower load"
            with self._lock:
                self._stats.failed_batches += 1
            self._end(run, reason)
            return True

    @staticmethod
    def _end(run: _Run, reason: str) -> None:
        """Fail every request of `run` with `reason`, giving their cache slots back."""
        victims = run.rows + run.new
        run.rows, run.new = [], []
        serving = run.loaded.runtime.get("serving")
        for s in victims:
            if serving is not None and s.index >= 0:
                serving.cache.give_back(s.index)
                s.index = -1
            s.finish("error", reason)

    def _serving(self, loaded: LoadedModel) -> _Serving:
        serving = loaded.runtime.get("serving")
        if serving is None or serving.cache.slots != self.max_batch:  # another engine's
            use_slot_attention(loaded.model)
            dtype = next(loaded.model.parameters()).dtype
            cache = SlotCache(loaded.model, self.max_batch, loaded.device, dtype)
            step = DecodeStep(loaded.model, cache, graphs=self.cuda_graphs)
            serving = loaded.runtime["serving"] = _Serving(cache, step)
        return serving

    @torch.inference_mode()
    def _step(self, run: _Run) -> bool:
        """Prefill the newcomers into free slots, then one decode step for every row."""
        loaded = run.loaded
        serving = self._serving(loaded)
        if run.new:
            self._admit(run, serving)
        if not run.rows:
            return True
        rows = sorted(run.rows, key=lambda s: s.index)
        used = rows[-1].index + 1
        ids, positions = [0] * used, [0] * used
        for s in rows:
            ids[s.index], positions[s.index] = s.last, s.position
        logits = serving.step(ids, positions)
        if used == len(rows):
            logits = logits[:used]
        else:
            logits = logits[torch.tensor([s.index for s in rows], device=logits.device)]
        with self._lock:
            self._stats.forward_passes += 1
        run.rows = self._take_tokens(serving, rows, self._sample(logits, rows, loaded))
        return not run.rows

    def _admit(self, run: _Run, serving: _Serving) -> None:
        """Prefill newcomers (up to PREFILL_TOKENS of prompt) into free slots; first tokens."""
        new: list[Slot] = []
        budget = PREFILL_TOKENS
        for s in run.new:
            if s.handle.cancelled:
                s.finish("cancelled")
            elif not new or len(s.prompt) <= budget:
                new.append(s)
                budget -= len(s.prompt)
        if not new:
            run.new = []
            return
        cache = serving.cache
        if cache.grow(max(len(s.prompt) for s in new) + 1):
            serving.step.reset()
        for s in new:
            s.index = cache.take()
            s.position = len(s.prompt)  # where its first generated token will be written
        logits = prefill(run.loaded.model, cache, [s.prompt for s in new], [s.index for s in new])
        taken = {id(s) for s in new}
        run.new = [s for s in run.new if not s.done and id(s) not in taken]  # the next step
        joining = bool(run.rows)
        size = len(run.rows) + len(new)
        for s in (*run.rows, *new):
            s.handle.batch_size = max(s.handle.batch_size, size)
        with self._lock:
            self._stats.batches += 1
            self._stats.forward_passes += 1
            self._stats.joined += len(new) if joining else 0
            self._stats.largest_batch = max(self._stats.largest_batch, size)
        tokens = self._sample(logits, new, run.loaded)
        run.rows += self._take_tokens(serving, new, tokens, fed=False)

    def _take_tokens(
        self, serving: _Serving, rows: list[Slot], tokens: list[int], *, fed: bool = True
    ) -> list[Slot]:
        """Hand each row its token; returns the rows still generating (their slots kept)."""
        staying = []
        for s, token in zip(rows, tokens, strict=True):
            if fed:
                s.position += 1  # the token fed this step is in the cache now
            if s.accept(token):
                serving.cache.give_back(s.index)
                s.index = -1
            else:
                s.last = token
                staying.append(s)
        with self._lock:
            self._stats.tokens_generated += len(rows)
        return staying

    def _sample(self, logits: torch.Tensor, rows: list[Slot], loaded: LoadedModel) -> list[int]:
        """One token per row, on the device, with one read of the chosen tokens."""
        scores = logits.float()
        if loaded.vocab_size is not None and loaded.vocab_size < scores.shape[-1]:
            scores[:, loaded.vocab_size :] = float("-inf")  # padding rows, not real tokens
        constraints = [s.thinking.constraint() if s.thinking else None for s in rows]
        if any(c is not None for c in constraints):
            apply_constraints(scores, constraints)
        temps = [s.request.temperature for s in rows]
        if all(t == 0 for t in temps):
            return [int(t) for t in scores.argmax(dim=-1).tolist()]
        device = scores.device
        top_p = [s.request.top_p for s in rows]
        params = torch.tensor([[max(t, 1e-5) for t in temps], top_p], device=device)
        scores = scores / params[0].unsqueeze(1)
        if any(p < 1.0 for p in top_p):
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
            ordered = ordered.masked_fill(before > params[1].unsqueeze(1), float("-inf"))
            scores = torch.empty_like(scores).scatter_(-1, order, ordered)
        probs = scores.softmax(dim=-1)
        # Exponential race (Gumbel-max): argmax(p / E) with E ~ Exp(1) draws from p.
        noise = torch.empty_like(probs).exponential_()
        for r, s in enumerate(rows):
            if s.generator is not None:
                # A seeded request draws from its own generator, whatever shares its batch.
                noise[r].exponential_(generator=s.generator)
        sampled = (probs / noise).argmax(dim=-1)
        if any(t == 0 for t in temps):
            greedy = torch.tensor([t == 0 for t in temps], device=device)
            sampled = torch.where(greedy, scores.argmax(dim=-1), sampled)
        return [int(t) for t in sampled.tolist()]
