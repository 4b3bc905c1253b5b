"""The chunked loss equals full cross-entropy, and never holds more than a chunk of logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from services.model.loading import load_model_and_tokenizer
from services.trainer.loss import causal_lm_loss, chunked_cross_entropy, forward_loss

QWEN3_VOCAB = 151_936


def reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(hidden @ weight.T, targets, reduction="sum")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_equals_full_cross_entropy_values_and_gradients(chunk: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (50,))
    loss, entropy = chunked_cross_entropy(
        hidden, weight, targets, chunk_tokens=chunk, with_entropy=True
    )
    (loss * 0.5).backward()  # a non-unit upstream gradient must scale both gradients
    ours = (hidden.grad, weight.grad)
    hidden.grad = weight.grad = None
    expected = reference(hidden, weight, targets)
    (expected * 0.5).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[0], hidden.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours[1], weight.grad, rtol=1e-5, atol=1e-7)
    log_p = torch.log_softmax((hidden @ weight.T).detach(), dim=-1)
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(), rtol=1e-5, atol=1e-5)
    assert not entropy.requires_grad


def test_no_gradient_work_in_eval() -> None:
    hidden, weight = torch.randn(20, 8), torch.randn(40, 8)
    targets = torch.randint(0, 40, (20,))
    with torch.no_grad():
        loss, entropy = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=6)
    torch.testing.assert_close(loss, reference(hidden, weight, targets))
    assert entropy.item() == 0.0


def test_bf16_activations_with_fp32_weight() -> None:
    torch.manual_seed(1)
    hidden = torch.randn(32, 16).bfloat16().requires_grad_()
    weight = torch.randn(100, 16, requires_grad=True)
    targets = torch.randint(0, 100, (32,))
    loss, _ = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=8)
    loss.backward()
    assert hidden.grad is not None and hidden.grad.dtype == torch.bfloat16
    assert weight.grad is not None and weight.grad.dtype == torch.float32
    expected = reference(hidden.float(), weight.bfloat16().float(), targets)
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0.5)


def test_causal_loss_shifts_and_skips_ignored_labels() -> None:
    torch.manual_seed(2)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    weight = torch.randn(30, 8)
    labels = torch.randint(0, 30, (2, 9))
    labels[0, :4] = -100
    labels[1, 6:] = -100
    out = causal_lm_loss(hidden, weight, labels, chunk_tokens=3, with_entropy=True)
    logits = hidden @ weight.T
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 30), labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert out.tokens == int((labels[:, 1:] != -100).sum()) == 5 + 5
    torch.testing.assert_close(out.loss_sum, expected)
    assert out.entropy_sum is not None
    empty = causal_lm_loss(hidden, weight, torch.full((2, 9), -100), chunk_tokens=3)
    assert empty.tokens == 0 and empty.loss_sum.item() == 0.0
    empty.loss_sum.backward()  # still differentiable: a micro-batch without loss tokens is fine


def test_matches_the_models_own_loss_and_tied_gradients(
    embedded_dir: Path, one_thread: None
) -> None:
    torch.manual_seed(3)
    model, _ = load_model_and_tokenizer(embedded_dir)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = torch.randint(0, 5000, (2, 40))
    labels = ids.clone()
    labels[:, :10] = -100
    positions = torch.arange(40).expand(2, -1)
    out = forward_loss(model, ids, positions, labels, chunk_tokens=16)
    (out.loss_sum / out.tokens).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    hf = model(input_ids=ids, position_ids=positions, labels=labels).loss
    hf.backward()
    torch.testing.assert_close(out.loss_sum / out.tokens, hf, rtol=1e-5, atol=1e-6)
    assert set(ours) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


class LargestTensor(TorchDispatchMode):
    """Records the element count of every tensor any aten op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_largest_tensor_is_bounded_by_the_chunk_not_the_tokens(one_thread: None) -> None:
    # Qwen3's vocabulary and 512 loss tokens: full fp32 logits would be 512 x 151,936 x 4
    # bytes = 311 MB; a chunk of 32 tokens bounds every tensor to 32 x 151,936 (19 MB).
    torch.manual_seed(4)
    tokens, width, chunk = 512, 8, 32
    hidden = torch.randn(tokens, width, requires_grad=True)
    weight = (torch.randn(QWEN3_VOCAB, width) * 0.02).requires_grad_()
    targets = torch.randint(0, QWEN3_VOCAB, (tokens,))
    watch = LargestTensor()
    with watch:
        loss, _entropy = chunked_cross_entropy(
            hidden, weight, targets, chunk_tokens=chunk, with_entropy=True
        )
        loss.backward()
    assert watch.largest <= max(chunk * QWEN3_VOCAB, weight.numel())
    assert watch.largest * 8 < tokens * QWEN3_VOCAB
    assert hidden.grad is not None and weight.grad is not None
    # Spot-check the value on a slice against full logits of those rows only.
    rows = slice(0, 48)
    full_rows = F.cross_entropy(hidden[rows] @ weight.T, targets[rows], reduction="sum")
    part, _ = chunked_cross_entropy(hidden[rows], weight, targets[rows], chunk_tokens=chunk)
    torch.testing.assert_close(part, full_rows, rtol=1e-5, atol=1e-4)
