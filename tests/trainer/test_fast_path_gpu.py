"""The CUDA fast path gives the CPU path's numbers: Liger's loss and gradients equal the chunked
loss, and packed rows through varlen attention (eager and compiled) equal documents alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from services.trainer.dataset_reader import DataCursor
from services.trainer.forward import StepForward, StepPlan, liger_available
from services.trainer.loss import IGNORE_INDEX, chunked_cross_entropy
from services.trainer.packing import PackedRow, collate
from services.trainer.validate import ExampleId

pytestmark = pytest.mark.skipif(
    not liger_available(),
    reason="needs a CUDA GPU and Liger-Kernel (the `cuda` extra); CI has neither — the fast "
    "path is checked on the GPU machine (bench/README.md)",
)


def test_liger_loss_and_gradients_equal_the_chunked_loss() -> None:
    torch.manual_seed(0)
    hidden = (torch.randn(3000, 1024, device="cuda") * 0.5).bfloat16().requires_grad_()
    weight = (torch.randn(151_936, 1024, device="cuda") * 0.02).bfloat16().requires_grad_()
    targets = torch.randint(0, 151_936, (3000,), device="cuda")
    model = Qwen3ForCausalLM(_tiny()).cuda()
    plan = StepPlan("sdpa", compile=False, liger_loss=True, liger_layers=False)
    fast = StepForward(model, plan, chunk_tokens=1024, max_length=256)
    liger = fast._liger_loss(hidden, weight, targets)
    (liger * 0.5).backward()
    got = (hidden.grad, weight.grad)
    hidden.grad = weight.grad = None
    ours, _ = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=1024)
    (ours * 0.5).backward()
    torch.testing.assert_close(liger.float(), ours.float(), rtol=2e-3, atol=0)
    for a, b in zip(got, (hidden.grad, weight.grad), strict=True):
        assert a is not None and b is not None
        cos = torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), 0)
        assert cos > 0.999
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=2e-3)


def _tiny() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
        tie_word_embeddings=True,
    )  # fmt: skip


def _row(docs: list[np.ndarray]) -> PackedRow:
    ids = np.concatenate(docs).astype(np.int32)
    labels = ids.astype(np.int64)
    starts = np.cumsum([0, *[len(d) for d in docs[:-1]]])
    labels[starts] = IGNORE_INDEX
    for s, d in zip(starts, docs, strict=True):
        labels[s : s + len(d) // 3] = IGNORE_INDEX  # a prompt without loss
    return PackedRow(
        input_ids=ids,
        labels=labels,
        position_ids=np.concatenate([np.arange(len(d), dtype=np.int32) for d in docs]),
        doc_lengths=tuple(len(d) for d in docs),
        examples=tuple(ExampleId(i + 1, i) for i in range(len(docs))),
        cursor_after=DataCursor(0, 0, 0),
        loss_tokens=int((labels != IGNORE_INDEX).sum()),
    )


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("attention", ["varlen", "flex_attention"])
def test_packed_loss_equals_documents_alone(attention: str, compiled: bool) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 1000, n) for n in (40, 150, 7, 59)]
    model = Qwen3ForCausalLM(_tiny()).cuda().to(torch.bfloat16)
    model.train()
    # Alone: one document per batch, plain eager sdpa, no packing at all.
    alone_sum, alone_tokens = 0.0, 0
    for d in docs:
        batch = collate([_row([d])], pad_id=0).to("cuda")
        logits = model(input_ids=batch.input_ids, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[0, :-1], batch.labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum"
        )
        alone_sum += loss.item()
        alone_tokens += int((batch.labels[0, 1:] != IGNORE_INDEX).sum())
    plan = StepPlan(attention, compile=compiled, liger_loss=True, liger_layers=False)
    fast = StepForward(model, plan, chunk_tokens=1024, max_length=256)
    rows = [_row(docs[:2]), _row(docs[2:])]
    batch = collate(rows, pad_id=0, width=256, batch_rows=3).to("cuda")  # an empty third row
    out = fast(batch)
    # Each document's hidden states equal its own, alone: nothing crossed a boundary.
    kwargs = {}
    if attention == "varlen":
        from services.trainer.attention import varlen_kwargs

        kwargs = varlen_kwargs(batch.cu_seqlens, 256)
    with torch.no_grad():
        packed = fast.decoder(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kwargs
        ).last_hidden_state.float()
        for r, row in enumerate(rows):
            at = 0
            for d in row.doc_lengths:
                ids = torch.from_numpy(row.input_ids[at : at + d]).long().cuda()[None]
                own = model.model(input_ids=ids, use_cache=False).last_hidden_state.float()
                torch.testing.assert_close(packed[r, at : at + d], own[0], rtol=0.05, atol=0.05)
                at += d
    assert batch.loss_tokens == alone_tokens == batch.loss_index.shape[0]  # type: ignore[union-attr]
    assert out.loss_sum.item() / alone_tokens == pytest.approx(alone_sum / alone_tokens, rel=2e-2)
    out.loss_sum.backward()  # and the backward runs through the kernels
    assert model.model.embed_tokens.weight.grad is not None
