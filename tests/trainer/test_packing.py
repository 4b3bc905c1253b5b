"""Packing: rows that keep documents apart, exact resume cursors, and a loss equal to unpacked."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.model.loading import load_model_and_tokenizer
from services.trainer.dataset_reader import DataCursor
from services.trainer.forward import StepForward, StepPlan
from services.trainer.loss import forward_loss
from services.trainer.packing import (
    DOC_SLOTS,
    PackedRow,
    PackingStats,
    StepRows,
    best_fit_decreasing,
    collate,
    file_rows,
    optimizer_steps,
    pack_rows,
)
from services.trainer.tokenize import ChatTokenizer
from services.trainer.validate import ExampleId, TokenizedExample, training_examples
from tests.rig.trainer import settings

MAX = 512


def test_best_fit_decreasing_fills_tightly_and_deterministically() -> None:
    assert best_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert sum(lengths) / (len(bins) * 128) > 0.95
    assert bins == best_fit_decreasing(lengths, 128)
    with pytest.raises(ValueError, match="129 tokens cannot fit a row of 128"):
        best_fit_decreasing([129], 128)


@pytest.fixture
def codec_file(codec_rows: list[dict[str, Any]], write_jsonl: Callable[..., Path]) -> Path:
    return write_jsonl(codec_rows[:120])


def examples_of(path: Path, chat: ChatTokenizer, start: DataCursor | None = None) -> Any:
    return training_examples(path, chat, settings(max_length=MAX), start=start)


def test_rows_keep_documents_apart(codec_file: Path, chat: ChatTokenizer) -> None:
    examples = list(examples_of(codec_file, chat))
    by_id = {e.id: e for e in examples}
    stats = PackingStats(MAX)
    rows = list(pack_rows(iter(examples), max_length=MAX, buffer_examples=50))
    for row in rows:
        stats.add(row)
        assert row.tokens <= MAX
        assert sum(row.doc_lengths) == row.tokens
        start = 0
        for example_id, length in zip(row.examples, row.doc_lengths, strict=True):
            doc: TokenizedExample = by_id[example_id]
            span = slice(start, start + length)
            assert np.array_equal(row.input_ids[span], doc.input_ids)
            assert np.array_equal(row.position_ids[span], np.arange(length))
            expected = np.where(doc.assistant_mask, doc.input_ids, -100)
            expected[0] = -100  # never a target across the boundary from the previous document
            assert np.array_equal(row.labels[span], expected)
            start += length
    assert sorted(e for r in rows for e in r.examples) == sorted(by_id)
    assert stats.documents == len(examples) and stats.efficiency > 0.9
    assert stats.loss_tokens == sum(e.loss_tokens for e in examples)


def test_every_cursor_resumes_exactly_after_its_row(codec_file: Path, chat: ChatTokenizer) -> None:
    s = settings(max_length=MAX, pack_buffer_examples=30)

    def rows_from(start: DataCursor | None) -> list[PackedRow]:
        return list(file_rows(codec_file, chat, s, start=start))

    rows = rows_from(None)
    ids = [r.examples for r in rows]
    assert rows[-1].cursor_after.offset == codec_file.stat().st_size
    mid_buffer = [i for i, r in enumerate(rows) if r.cursor_after.rows_done > 0]
    at_boundary = [i for i, r in enumerate(rows[:-1]) if r.cursor_after.rows_done == 0]
    assert mid_buffer and at_boundary
    for k in [mid_buffer[0], mid_buffer[-1], *at_boundary[:2]]:
        resumed = rows_from(rows[k].cursor_after)
        assert [r.examples for r in resumed] == ids[k + 1 :], k


def test_steps_hold_a_token_budget_and_micro_batches_keep_every_row(
    codec_file: Path, chat: ChatTokenizer
) -> None:
    rows = list(pack_rows(examples_of(codec_file, chat), max_length=MAX, buffer_examples=50))
    steps = list(optimizer_steps(iter(rows), tokens_per_step=4 * MAX))
    assert [r for s in steps for r in s.rows] == rows
    assert all(s.tokens <= 4 * MAX for s in steps)
    assert all(len(s.rows) >= 3 for s in steps[:-1])  # rows are nearly full
    step = steps[0]
    for per_batch in (1, 2, 3):
        batches = step.micro_batches(per_batch, pad_id=0)
        assert sum(b.tokens for b in batches) == step.tokens
        assert sum(b.loss_tokens for b in batches) == step.loss_tokens
        assert batches[-1].cursor_after == step.cursor_after
        assert tuple(e for b in batches for e in b.examples) == step.examples


def test_collate_pads_without_loss_and_as_a_document_of_its_own(chat: ChatTokenizer) -> None:
    short = TokenizedExample(
        id=_id(1),
        input_ids=np.arange(5, dtype=np.int32) + 10,
        assistant_mask=np.array([0, 0, 1, 1, 1], bool),
        next_offset=1,
    )
    long = TokenizedExample(
        id=_id(2),
        input_ids=np.arange(8, dtype=np.int32) + 20,
        assistant_mask=np.ones(8, bool),
        next_offset=2,
    )
    rows = list(pack_rows([short, long], max_length=8, buffer_examples=10))
    batch = collate(rows, pad_id=7)
    assert batch.input_ids.shape == (2, 8)
    padded = next(i for i, r in enumerate(rows) if r.tokens == 5)
    assert batch.input_ids[padded, 5:].tolist() == [7, 7, 7]
    assert batch.labels[padded].tolist() == [-100, -100, 12, 13, 14, -100, -100, -100]
    assert batch.position_ids[padded].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch.loss_tokens == 3 + 7 and batch.tokens == 13


def _id(line: int) -> ExampleId:
    return ExampleId(line=line, offset=line * 100)


@pytest.fixture(scope="module")
def model(embedded_dir: Path) -> Any:
    loaded, _ = load_model_and_tokenizer(embedded_dir)
    return loaded


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_document_sees_only_itself(
    model: Any, codec_file: Path, chat: ChatTokenizer, attention: str, one_thread: None
) -> None:
    model.set_attn_implementation(attention)
    docs = list(examples_of(codec_file, chat))[:3]
    row = torch.from_numpy(np.concatenate([d.input_ids for d in docs])).long()[None]
    positions = torch.cat([torch.arange(d.length) for d in docs])[None]
    start = docs[0].length
    span = slice(start, start + docs[1].length)
    alone_ids = torch.from_numpy(docs[1].input_ids).long()[None]
    with torch.no_grad():
        # use_cache=False matters: with a cache transformers skips packed-sequence detection
        # and doc 2 would attend to doc 1 (forward_loss passes it).
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, span]
        alone = model(input_ids=alone_ids, use_cache=False).logits[0]
        # The same row with a plain mask, or with a cache, attends across documents.
        leaks = [
            model(input_ids=row, position_ids=positions, attention_mask=torch.ones_like(row)),
            model(input_ids=row, position_ids=positions, use_cache=True),
        ]
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)
    for leaky in leaks:
        assert (leaky.logits[0, span] - alone).abs().max() > 1e-3
    model.set_attn_implementation("sdpa")


def test_packed_loss_equals_token_weighted_unpacked_loss(
    model: Any, codec_file: Path, chat: ChatTokenizer, one_thread: None
) -> None:
    docs = list(examples_of(codec_file, chat))[:24]
    rows = list(pack_rows(iter(docs), max_length=MAX, buffer_examples=100))
    step = StepRows(tuple(rows))
    with torch.no_grad():
        packed_sum, packed_tokens = 0.0, 0
        for batch in step.micro_batches(2, pad_id=chat.tokenizer.pad_token_id):
            out = forward_loss(
                model, batch.input_ids, batch.position_ids, batch.labels, chunk_tokens=64
            )
            packed_sum += out.loss_sum.item()
            packed_tokens += out.tokens
        alone_sum, alone_tokens = 0.0, 0
        for doc in docs:
            ids = torch.from_numpy(doc.input_ids).long()[None]
            labels = torch.where(torch.from_numpy(doc.assistant_mask)[None], ids, -100)
            # The model's own loss, averaged per example, weighted back by its tokens.
            loss = model(input_ids=ids, labels=labels).loss.item()
            tokens = int((labels[0, 1:] != -100).sum())
            alone_sum += loss * tokens
            alone_tokens += tokens
    assert packed_tokens == alone_tokens == step.loss_tokens
    assert packed_sum / packed_tokens == pytest.approx(alone_sum / alone_tokens, rel=1e-5)


def test_collate_gives_the_step_its_boundaries_and_loss_positions(chat: ChatTokenizer) -> None:
    # What the CUDA step needs from the host: document boundaries for varlen attention and
    # the loss positions, so that it never asks the device for a count.
    docs = [
        TokenizedExample(_id(i), np.arange(n, dtype=np.int32) + 10, mask, next_offset=i)
        for i, (n, mask) in enumerate(
            [(5, np.array([0, 0, 1, 1, 1], bool)), (3, np.ones(3, bool)), (6, np.ones(6, bool))]
        )
    ]
    rows = [_row_of(docs[:2]), _row_of(docs[2:])]
    batch = collate(rows, pad_id=7, width=10, batch_rows=3)  # fixed shape: one empty row
    assert batch.input_ids.shape == (3, 10)
    assert batch.cu_seqlens is not None and batch.loss_index is not None
    bounds = batch.cu_seqlens.tolist()
    assert len(bounds) % DOC_SLOTS == 0
    # row 0: docs of 5 and 3, then 2 of padding; row 1: 6, then 4; row 2: one empty row.
    assert bounds[:7] == [0, 5, 8, 10, 16, 20, 30] and set(bounds[7:]) == {30}
    assert batch.loss_index.shape[0] == batch.loss_tokens == sum(r.loss_tokens for r in rows)
    flat = batch.labels.view(-1)
    assert torch.equal(batch.loss_targets, flat[batch.loss_index + 1])
    assert bool((batch.loss_targets != -100).all())
    # Every real label after position 0 of a row is a target exactly once.
    assert int((batch.labels[:, 1:] != -100).sum()) == batch.loss_index.shape[0]


def _row_of(docs: list[TokenizedExample]) -> PackedRow:
    return next(iter(pack_rows(iter(docs), max_length=sum(d.length for d in docs))))


def test_the_cpu_step_forward_equals_forward_loss(
    model: Any, codec_file: Path, chat: ChatTokenizer, one_thread: None
) -> None:
    docs = list(examples_of(codec_file, chat))[:12]
    step = StepRows(tuple(pack_rows(iter(docs), max_length=MAX, buffer_examples=100)))
    plan = StepPlan.resolve(settings(), torch.device("cpu"))
    assert (plan.attention, plan.compile, plan.liger_loss) == ("sdpa", False, False)
    fast = StepForward(model, plan, chunk_tokens=64, max_length=MAX)
    with torch.no_grad():
        for batch in step.micro_batches(2, pad_id=chat.tokenizer.pad_token_id, width=MAX):
            ours = fast(batch)
            ref = forward_loss(
                model, batch.input_ids, batch.position_ids, batch.labels, chunk_tokens=64
            )
            assert ours.entropy_tokens == min(ref.tokens, 512)
            torch.testing.assert_close(ours.loss_sum, ref.loss_sum, rtol=1e-5, atol=1e-4)
