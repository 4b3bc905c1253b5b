"""Cross-entropy over a large vocabulary in chunks of tokens, never materializing all the logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, `chunk` rows at a time.

    The gradients are computed in the same pass as the loss (as fused linear cross-entropy
    kernels do) and kept: d hidden is (N, H) and d weight is (V, H) fp32, the size of the
    weight's own gradient. So neither forward nor backward ever holds more than one chunk of
    logits: about two (chunk, V) fp32 tensors (log-probabilities and probabilities).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        want_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Matmuls run in the activations' dtype (bf16 on GPU), softmax always in fp32.
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 if given
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        entropy = torch.zeros((), dtype=acc, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        )
        # Autocast would recast inside; dtypes here are chosen on purpose.
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk]
                t = targets[start : start + chunk]
                logits = (h @ w.T).to(acc)
                lse = torch.logsumexp(logits, dim=-1)
                loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if not (need_hidden or need_weight or want_entropy):
                    continue
                log_probs = logits.sub_(lse[:, None])  # in place: the logits are not needed again
                probs = log_probs.exp()
                if want_entropy:
                    # -sum p log p per row as a batched dot product: no third (chunk, V) tensor.
                    entropy -= torch.bmm(probs[:, None, :], log_probs[:, :, None]).sum()
                del log_probs, logits
                # d loss / d logits = softmax - one_hot(target), built in place in `probs`.
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk] = probs.to(w.dtype) @ w
                if grad_weight is not None:
                    grad_weight.addmm_(probs.T, h.to(acc))
                del probs
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight if grad_weight is not None else torch.empty(0),
        )
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(entropy)
        return loss, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_entropy: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        # In place: backward runs once per forward, and a second (V, H) copy is what we avoid.
        d_hidden = (
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)) if ctx.needs_input_grad[0] else None
        )
        d_weight = (
            grad_weight.mul_(grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        )
        return d_hidden, d_weight, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE of the logits `hidden @ weight.T` (hidden (N, H), weight (V, H)) vs `targets`.

    Returns (loss_sum, entropy_sum): entropy_sum is the summed entropy of the predictive
    distribution (no gradient; zero unless `with_entropy`). Every target must be a real class.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: need (N, H) and (V, H)"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens}: need at least 1 (R3_LOSS_CHUNK_TOKENS)")
    apply = _ChunkedCrossEntropy.apply  # untyped in torch's stubs
    out: tuple[torch.Tensor, torch.Tensor] = apply(  # type: ignore[no-untyped-call]
        hidden, weight, targets, chunk_tokens, with_entropy
    )
    return out


@dataclass(frozen=True)
class LossOutput:
    """Summed loss over the loss tokens of a micro-batch, for token-weighted averaging."""

    loss_sum: torch.Tensor  # scalar fp32, differentiable; divide by the step's loss tokens
    tokens: int  # loss tokens in this micro-batch
    entropy_sum: torch.Tensor | None  # summed token entropy (no gradient), if asked for


def causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> LossOutput:
    """Next-token loss of (B, T, H) final hidden states against (B, T) labels, HF convention:
    label t is predicted at position t-1 and -100 is ignored. Only positions whose next
    label is real are multiplied by the vocabulary at all.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    tokens = int(keep.sum())
    if tokens == 0:
        zero = hidden_states.sum() * 0.0  # keeps the graph so backward still runs
        return LossOutput(zero.float(), 0, zero.detach().float() if with_entropy else None)
    selected = hidden_states[:, :-1][keep]
    loss_sum, entropy_sum = chunked_cross_entropy(
        selected,
        lm_head_weight,
        targets[keep],
        chunk_tokens=chunk_tokens,
        with_entropy=with_entropy,
    )
    return LossOutput(loss_sum, tokens, entropy_sum if with_entropy else None)


def forward_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> LossOutput:
    """Run a causal LM's decoder on a packed batch and take the chunked loss on its head.

    No attention mask is passed: from position ids that restart at 0 transformers (>= 4.53,
    torch >= 2.6) builds attention that does not cross documents (`find_packed_sequence_indices`).
    It does so only without a KV cache, hence `use_cache=False`: with the model's default
    (a cache) every document would silently attend to the ones before it in its row.
    """
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not callable(get_decoder) or not isinstance(head, nn.Linear):
        raise TypeError(
            f"{type(model).__name__}: need a causal LM with a decoder and a linear head"
        )
    if head.bias is not None:
        raise ValueError(f"{type(model).__name__}: an lm_head with a bias is not supported")
    out = get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    return causal_lm_loss(
        out.last_hidden_state,
        head.weight,
        labels,
        chunk_tokens=chunk_tokens,
        with_entropy=with_entropy,
    )
