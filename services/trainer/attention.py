"""Attention over packed documents with no mask at all: PyTorch's varlen (flash) kernel on CUDA.

A packed row holds several documents; none may see another. transformers builds that from
the position ids as a dense (T, T) mask for sdpa (most of its work masked out: documents
average ~700 of 4096 tokens) or a block mask for flex_attention. The varlen kernel instead
takes the documents' boundaries (`cu_seqlens`, from the packer, on the host) and never
computes a block across two documents.

`VARLEN` is registered with transformers' AttentionInterface and selected on the model with
`set_attn_implementation`. It runs varlen only when the training step passes the boundaries
(`cu_seq_lens_q`, as transformers' flash-attention kwargs are named); any other call (the
in-loop sample's and the fixed evaluation's `generate`, with a KV cache) falls through to sdpa
with the causal mask that transformers builds for it as for sdpa.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

VARLEN = "r3_varlen"
# Every layer type a model may have; the step passes None for each so that no mask is built.
NO_MASK: dict[str, None] = {"full_attention": None, "sliding_attention": None}


def varlen_available() -> bool:
    """True where the varlen kernel can run: torch >= 2.10 with a CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _varlen_call() -> tuple[Any, bool]:
    """The kernel with causal masking, whichever way this torch spells it (2.10: is_causal;
    2.11+: window_size), and whether it takes fewer KV heads than query heads itself."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    gqa = "enable_gqa" in params
    if "window_size" in params:

        def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *a: Any, **kw: Any) -> Any:
            if gqa:
                kw["enable_gqa"] = True
            return varlen_attn(q, k, v, *a, window_size=(-1, 0), **kw)

    else:

        def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *a: Any, **kw: Any) -> Any:
            return varlen_attn(q, k, v, *a, is_causal=True, **kw)  # type: ignore[call-arg]

    return causal, gqa


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (B, H, T, D), key/value (B, Hkv, T, D);
    returns (B, T, H, D). `cu_seq_lens_q` are the boundaries over the B*T flattened tokens."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if dropout:
        raise ValueError("varlen attention: attention dropout is not supported in training")
    if _KERNEL is None:
        raise RuntimeError("varlen attention: call register_varlen() first")
    call, gqa = _KERNEL
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    if kv_heads != heads and not gqa:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    longest = int(max_length_q) if max_length_q is not None else length
    out = call(q, k, v, cu_seq_lens_q, cu_seq_lens_q, longest, longest, scale=scaling)
    return out.view(batch, length, heads, dim), None


_KERNEL: tuple[Any, bool] | None = None  # resolved once, eagerly: not inside a compiled graph


def register_varlen() -> None:
    """Make `VARLEN` an attention implementation transformers accepts (idempotent)."""
    global _KERNEL
    from transformers import AttentionInterface

    _KERNEL = _varlen_call()
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    # Calls without boundaries (generation) get the mask sdpa would get.
    AttentionMaskInterface.register(VARLEN, sdpa_mask)


def varlen_kwargs(cu_seqlens: torch.Tensor, longest: int) -> dict[str, Any]:
    """What a training forward passes to the decoder for VARLEN: the boundaries, the longest
    document (an upper bound: the row length, so it never changes and never recompiles), and
    a mask mapping of None so transformers builds no mask."""
    return {
        "attention_mask": NO_MASK,
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens,
        "max_length_q": longest,
        "max_length_k": longest,
    }
