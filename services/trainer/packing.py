"""Pack examples best-fit into rows of max_length, then rows into micro-batches and steps."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.trainer.config import TrainerSettings
from services.trainer.dataset_reader import DataCursor
from services.trainer.errors import DataChangedError
from services.trainer.loss import IGNORE_INDEX
from services.trainer.tokenize import ChatTokenizer
from services.trainer.validate import ExampleId, TokenizedExample, training_examples


@dataclass(frozen=True, slots=True)
class PackedRow:
    """Whole examples laid end to end, each a document of its own (no padding inside)."""

    input_ids: np.ndarray  # int32 (length,), length <= max_length
    labels: np.ndarray  # int64: the token on assistant tokens; -100 elsewhere and at each
    # document's first token, so no target is ever predicted across a document boundary
    position_ids: np.ndarray  # int32: 0, 1, ... restarting at each document
    doc_lengths: tuple[int, ...]
    examples: tuple[ExampleId, ...]  # in row order, one per document
    cursor_after: DataCursor  # resuming here continues right after this row
    loss_tokens: int

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[0])


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of `capacity`: longest first, each into the bin
    it fills most tightly. Deterministic: ties go to the earlier index and the older bin.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), kept sorted
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"an example of {size} tokens cannot fit a row of {capacity}")
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            bins.append([index])
            bisect.insort(free, (capacity - size, len(bins) - 1))
            continue
        room, number = free.pop(at)
        bins[number].append(index)
        if room - size > 0:
            bisect.insort(free, (room - size, number))
    return bins


def _row(docs: list[TokenizedExample], cursor_after: DataCursor) -> PackedRow:
    input_ids = np.concatenate([d.input_ids for d in docs]).astype(np.int32, copy=False)
    mask = np.concatenate([d.assistant_mask for d in docs])
    labels = np.where(mask, input_ids.astype(np.int64), IGNORE_INDEX)
    lengths = [d.length for d in docs]
    starts = np.cumsum([0, *lengths[:-1]])
    labels[starts] = IGNORE_INDEX
    position_ids = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    return PackedRow(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        doc_lengths=tuple(lengths),
        examples=tuple(d.id for d in docs),
        cursor_after=cursor_after,
        loss_tokens=int((labels != IGNORE_INDEX).sum()),
    )


def _buffers(examples: Iterable[TokenizedExample], size: int) -> Iterator[list[TokenizedExample]]:
    # A buffer ends only between lines, so the pieces of a split line stay together and a
    # buffer always starts at a line a cursor can point at.
    buffer: list[TokenizedExample] = []
    for example in examples:
        if len(buffer) >= size and example.id.offset != buffer[-1].id.offset:
            yield buffer
            buffer = []
        buffer.append(example)
    if buffer:
        yield buffer


def pack_rows(
    examples: Iterable[TokenizedExample],
    *,
    max_length: int,
    buffer_examples: int = 2000,
    seed: int = 0,
    start: DataCursor | None = None,
) -> Iterator[PackedRow]:
    """Rows of at most `max_length` tokens from a stream of examples, a buffer at a time.

    Each buffer of `buffer_examples` examples is packed best-fit-decreasing, and its rows are
    shuffled with a seed drawn from the buffer's offset, so the same examples always give the
    same rows in the same order. That makes a mid-buffer cursor exact: `start.rows_done` rows
    of the first buffer (which must begin at `start.offset`) are skipped.
    """
    skip = start.rows_done if start is not None else 0
    for buffer in _buffers(examples, buffer_examples):
        first, last = buffer[0].id, buffer[-1]
        if skip and start is not None and first.offset != start.offset:
            raise DataChangedError(
                f"the resume cursor points at byte {start.offset} (line {start.line}) but the "
                f"first example read is at byte {first.offset}; the file changed"
            )
        bins = best_fit_decreasing([e.length for e in buffer], max_length)
        # Sorted by size the rows would come longest first in every buffer; a seeded
        # shuffle keeps them reproducible without that pattern.
        random.Random(f"{seed}:{first.offset}").shuffle(bins)
        if skip > len(bins):
            raise DataChangedError(
                f"the resume cursor skips {skip} rows of the pack buffer at line {first.line}, "
                f"which now packs into {len(bins)}; the file or the packing settings changed"
            )
        for number, indices in enumerate(bins):
            if number < skip:
                continue
            if number + 1 < len(bins):
                after = DataCursor(first.offset, first.line, number + 1)
            else:
                after = DataCursor(last.next_offset, last.id.line + 1, 0)
            # Documents keep file order inside a row, which keeps rows easy to read.
            docs = [buffer[i] for i in sorted(indices)]
            yield _row(docs, after)
        skip = 0


def file_rows(
    path: Path,
    chat: ChatTokenizer,
    settings: TrainerSettings,
    *,
    rejected_offsets: Sequence[int] = (),
    start: DataCursor | None = None,
    workers: int = 0,
) -> Iterator[PackedRow]:
    """The packed rows of a validated file from a cursor: the reader and the packer both
    start from `start`, which is what makes a row's `cursor_after` resume exactly."""
    examples = training_examples(
        path, chat, settings, rejected_offsets=rejected_offsets, start=start, workers=workers
    )
    return pack_rows(
        examples,
        max_length=settings.max_length,
        buffer_examples=settings.pack_buffer_examples,
        seed=settings.seed,
        start=start,
    )


@dataclass
class PackingStats:
    """Tokens against row slots: how much of max_length-long rows is real data."""

    max_length: int
    rows: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    documents: int = 0

    def add(self, row: PackedRow) -> None:
        self.rows += 1
        self.tokens += row.tokens
        self.loss_tokens += row.loss_tokens
        self.documents += len(row.doc_lengths)

    @property
    def efficiency(self) -> float:
        return self.tokens / (self.rows * self.max_length) if self.rows else 0.0


# cu_seqlens is padded with zero-length documents to a multiple of this many entries, so its
# shape (and a compiled graph's guards) changes only every this many documents.
DOC_SLOTS = 64


@dataclass(frozen=True)
class PackedBatch:
    """Rows stacked into tensors for one forward/backward pass (no attention mask needed).

    Everything the step needs to know about the batch's documents and loss positions is
    computed here, on the host, from the packer's own records: the GPU step never has to ask
    the device (a host synchronisation) how many tokens carry a loss or where documents end.
    """

    input_ids: torch.Tensor  # (B, T) int64, padded with the pad token
    labels: torch.Tensor  # (B, T) int64, -100 on padding
    position_ids: torch.Tensor  # (B, T) int64; padding is one more document starting at 0
    tokens: int  # real tokens, padding excluded
    loss_tokens: int
    examples: tuple[ExampleId, ...]
    cursor_after: DataCursor
    # Document boundaries over the B*T flattened tokens (padding a document of its own),
    # int32, padded to a multiple of DOC_SLOTS entries with zero-length documents at the end.
    cu_seqlens: torch.Tensor | None = None
    # Flattened positions b*T + t whose next token carries a loss, and those next tokens:
    # the loss multiplies only these hidden states by the vocabulary.
    loss_index: torch.Tensor | None = None
    loss_targets: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PackedBatch:
        # From pinned memory a copy to the GPU is truly asynchronous; from pageable memory
        # CUDA waits for the stream first, a host synchronisation per micro-batch.
        pin = torch.device(device).type == "cuda"

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return (t.pin_memory() if pin else t).to(device, non_blocking=True)

        return PackedBatch(
            move(self.input_ids),  # type: ignore[arg-type]
            move(self.labels),  # type: ignore[arg-type]
            move(self.position_ids),  # type: ignore[arg-type]
            self.tokens,
            self.loss_tokens,
            self.examples,
            self.cursor_after,
            move(self.cu_seqlens),
            move(self.loss_index),
            move(self.loss_targets),
        )


def collate(
    rows: Sequence[PackedRow], pad_id: int, width: int | None = None, batch_rows: int | None = None
) -> PackedBatch:
    """Stack rows, padding each to the longest, or to `width` and the batch to `batch_rows`
    with empty rows, so that every batch of a run has one shape (what a compiled graph wants:
    a new shape is a new compilation). Padding never takes part in the loss."""
    if not rows:
        raise ValueError("collate needs at least one row")
    longest = max(r.tokens for r in rows)
    width = longest if width is None else width
    batch_rows = len(rows) if batch_rows is None else batch_rows
    if width < longest or batch_rows < len(rows):
        raise ValueError(
            f"collate: {len(rows)} rows of up to {longest} tokens do not fit {batch_rows} x {width}"
        )
    ids = torch.full((batch_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((batch_rows, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.arange(width).repeat(batch_rows, 1)
    bounds: list[int] = [0]
    index: list[np.ndarray] = []
    for i, row in enumerate(rows):
        n = row.tokens
        ids[i, :n] = torch.from_numpy(row.input_ids)
        labels[i, :n] = torch.from_numpy(row.labels)
        positions[i, :n] = torch.from_numpy(row.position_ids)
        positions[i, n:] = torch.arange(width - n)
        for length in (*row.doc_lengths, width - n):
            if length:
                bounds.append(bounds[-1] + length)
        # Position t predicts label t + 1; the row's labels are -100 past its end.
        index.append(np.flatnonzero(row.labels[1:] != IGNORE_INDEX) + i * width)
    for _ in range(len(rows), batch_rows):
        bounds.append(bounds[-1] + width)  # an empty row: one padding document
    bounds += [bounds[-1]] * (-len(bounds) % DOC_SLOTS)
    loss_index = torch.from_numpy(np.concatenate(index).astype(np.int64))
    return PackedBatch(
        input_ids=ids,
        labels=labels,
        position_ids=positions,
        tokens=sum(r.tokens for r in rows),
        loss_tokens=sum(r.loss_tokens for r in rows),
        examples=tuple(e for r in rows for e in r.examples),
        cursor_after=rows[-1].cursor_after,
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        loss_index=loss_index,
        loss_targets=labels.view(-1)[loss_index + 1],
    )


@dataclass(frozen=True)
class StepRows:
    """The rows of one optimizer step; the loop cuts them into micro-batches it can afford."""

    rows: tuple[PackedRow, ...]
    tokens: int = field(init=False)
    loss_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", sum(r.tokens for r in self.rows))
        object.__setattr__(self, "loss_tokens", sum(r.loss_tokens for r in self.rows))

    @property
    def cursor_after(self) -> DataCursor:
        return self.rows[-1].cursor_after

    @property
    def examples(self) -> tuple[ExampleId, ...]:
        return tuple(e for r in self.rows for e in r.examples)

    def micro_batches(
        self,
        rows_per_batch: int,
        pad_id: int,
        width: int | None = None,
        *,
        rank: int = 0,
        world: int = 1,
    ) -> list[PackedBatch]:
        """Consecutive groups of `rows_per_batch` rows (after an out-of-memory, pass fewer:
        the step's rows and so its loss are unchanged, only accumulation grows). With `width`,
        every micro-batch is `rows_per_batch` x `width`, the last one filled with empty rows.
        With `world` ranks, rank r's share: micro-batches r, r + world, ..."""
        if rows_per_batch < 1:
            raise ValueError(f"rows_per_batch={rows_per_batch}: need at least 1")
        full = rows_per_batch if width is not None else None
        starts = range(0, len(self.rows), rows_per_batch)[rank::world]
        return [collate(self.rows[i : i + rows_per_batch], pad_id, width, full) for i in starts]

    def micro_batch_count(self, rows_per_batch: int) -> int:
        return -(-len(self.rows) // rows_per_batch)


def optimizer_steps(rows: Iterable[PackedRow], tokens_per_step: int) -> Iterator[StepRows]:
    """Group rows into steps of at most `tokens_per_step` real tokens (at least one row each);
    the last step of the stream may be smaller."""
    taken: list[PackedRow] = []
    tokens = 0
    for row in rows:
        if taken and tokens + row.tokens > tokens_per_step:
            yield StepRows(tuple(taken))
            taken, tokens = [], 0
        taken.append(row)
        tokens += row.tokens
    if taken:
        yield StepRows(tuple(taken))
