"""The decode step captured once per (rows, length) bucket and replayed as a CUDA graph.

A decode step of a small model is hundreds of small kernels; launched one by one from
Python the host, not the GPU, sets the pace. Captured once per bucket and replayed, the
whole step is one launch. Buckets: rows rounded up to 1, 2, 4, …, 128 (then the slot
count), attended length to a power of two (`kv.length_bucket`). On a CPU the same step
runs eagerly: one engine, one cache, one code path for the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from services.node.serving.kv import SlotCache, decode, length_bucket

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def row_bucket(rows: int, slots: int) -> int:
    for bucket in ROW_BUCKETS:
        if rows <= bucket:
            return min(bucket, slots)
    return slots


class DecodeStep:
    """One model's decode step over its slot cache: graph replay on CUDA, eager elsewhere."""

    def __init__(self, model: Any, cache: SlotCache, *, graphs: bool) -> None:
        self.model = model
        self.cache = cache
        device = cache.device
        self.graphs = graphs and device.type == "cuda"
        # Static inputs: a captured graph reads them at fixed addresses.
        self.ids = torch.zeros(cache.slots, dtype=torch.long, device=device)
        self.positions = torch.zeros(cache.slots, dtype=torch.long, device=device)
        self._host = torch.zeros((2, cache.slots), dtype=torch.long, pin_memory=self.graphs)
        self._captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: Any = None
        self.captures = 0

    def reset(self) -> None:
        """Forget captured graphs (the cache moved, or the step is retired)."""
        self._captured.clear()
        self._pool = None

    @torch.inference_mode()
    def __call__(self, ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Feed `ids[i]` at `positions[i]` to slot i; returns logits (≥ len(ids) rows).

        Slots not in use take token 0 at position 0 (their row is free: nothing is harmed).
        """
        used = len(ids)
        if self.cache.grow(max(positions) + 1):
            self.reset()
        rows = row_bucket(used, self.cache.slots)
        length = min(length_bucket(max(positions) + 1), self.cache.capacity)
        host = self._host
        host[:, :rows] = 0
        host[0, :used] = torch.tensor(list(ids))
        host[1, :used] = torch.tensor(list(positions))
        self.ids[:rows].copy_(host[0, :rows], non_blocking=True)
        self.positions[:rows].copy_(host[1, :rows], non_blocking=True)
        if not self.graphs:
            return decode(self.model, self.cache, self.ids[:rows], self.positions[:rows], length)
        key = (rows, length)
        captured = self._captured.get(key)
        if captured is None:
            try:
                captured = self._captured[key] = self._capture(rows, length)
            except Exception:  # a model whose step cannot be captured still serves, eagerly
                log.exception("capturing the decode step failed; this model runs eagerly")
                self.graphs = False
                self.reset()
                torch.cuda.synchronize(self.cache.device)
                return decode(
                    self.model, self.cache, self.ids[:rows], self.positions[:rows], length
                )
        graph, logits = captured
        graph.replay()
        return logits

    def _capture(self, rows: int, length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        device = self.cache.device
        args = (self.model, self.cache, self.ids[:rows], self.positions[:rows], length)
        # The warm-up pass runs on the inputs of the replay that follows, so the cache
        # writes it makes are the ones that replay makes again.
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            decode(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # Graphs share one memory pool: they run one at a time on one stream and each
        # step's output is consumed before the next replay.
        # thread_local: a model loading or a score computed on another thread meanwhile (a
        # hot swap, /v1/score) must neither break this capture nor be refused by it.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = decode(*args)
        self.captures += 1
        return graph, logits
