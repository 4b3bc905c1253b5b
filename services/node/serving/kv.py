"""The slot KV cache: one row per request, written in place at that row's own position.

Each layer keeps keys and values as `[slots, kv_heads, capacity, head_dim]`. A request owns
one slot from its prefill to its end; its tokens sit at positions 0..length-1 of that slot,
so rows of different lengths share one decode step with nothing moved, padded or
concatenated. Why not transformers' caches: `DynamicCache` grows by concatenation every
step (new tensors, so no CUDA graph can replay it), and `StaticCache` has one
`cache_position` for the whole batch, where continuous batching needs one per row. The
model itself is transformers' own: the cache reaches it through an attention function
registered with `AttentionInterface` (`ATTENTION`), which writes each row's new keys and
values at that row's position and attends over the cache with a per-row length mask.

Outside a slot pass (scoring, warm-up, `generate`) the same function is plain SDPA, so one
model object serves both.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION = "r3_slots"
MIN_CAPACITY = 256  # the shortest length bucket; capacities and buckets are powers of two

# No mask is built by the model in a slot pass: each layer's attention makes its own.
NO_MASK: dict[str, None] = {"full_attention": None, "sliding_attention": None}


def length_bucket(length: int) -> int:
    """The power of two (at least MIN_CAPACITY) that holds `length` positions."""
    bucket = MIN_CAPACITY
    while bucket < length:
        bucket *= 2
    return bucket


class SlotCache:
    """Keys and values of up to `slots` requests of one model, and which slots are free."""

    def __init__(self, model: Any, slots: int, device: torch.device, dtype: torch.dtype) -> None:
        config = model.config.get_text_config()
        self.layers = int(config.num_hidden_layers)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 1 << 20)
        self.slots = slots
        self.device = device
        self.dtype = dtype
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._free = list(range(slots))
        self.grow(MIN_CAPACITY)

    def grow(self, length: int) -> bool:
        """Make room for `length` positions per slot (doubling); True if reallocated.

        A reallocation moves every tensor, so captured decode steps must be dropped.
        """
        if length <= self.capacity:
            return False
        capacity = min(length_bucket(length), max(self.max_positions, length))
        shape = (self.slots, self.kv_heads, capacity, self.head_dim)
        keys, values = [], []
        for layer in range(self.layers):
            k = torch.zeros(shape, device=self.device, dtype=self.dtype)
            v = torch.zeros(shape, device=self.device, dtype=self.dtype)
            if self.capacity:
                k[:, :, : self.capacity].copy_(self.keys[layer])
                v[:, :, : self.capacity].copy_(self.values[layer])
                self.keys[layer] = self.values[layer] = torch.empty(0)  # free as we go
            keys.append(k)
            values.append(v)
        self.keys, self.values, self.capacity = keys, values, capacity
        return True

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # -- slots -----------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def take(self) -> int:
        """The lowest free slot (keeps the rows in use packed at the front: smaller steps)."""
        self._free.sort()
        return self._free.pop(0)

    def give_back(self, slot: int) -> None:
        self._free.append(slot)


@dataclass
class _Pass:
    """What the attention layers of the forward pass under way need from the engine."""

    cache: SlotCache
    prefill: bool
    slots: torch.Tensor | None = None  # prefill: each row's slot
    positions: torch.Tensor | None = None  # decode: (rows,) position written this step
    rows: torch.Tensor | None = None  # decode: arange(rows), the slots stepped
    mask: torch.Tensor | None = None  # decode: (rows, 1, 1, length) True where attended
    length: int = 0  # decode: the positions attended (a bucket)


_local = threading.local()


def _current() -> _Pass | None:
    return getattr(_local, "active", None)


def slot_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention through the slot cache in a slot pass; transformers' SDPA otherwise."""
    active = _current()
    if active is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    layer = module.layer_idx
    keys, values = active.cache.keys[layer], active.cache.values[layer]
    if active.prefill:
        # Right-padded prompts from position 0: causal attention over the prompt itself is
        # exact for every real token (padding comes after it), and the whole prompt's keys
        # and values land in the row's slot; positions past the prompt are rewritten later.
        assert active.slots is not None
        width = key.shape[2]
        keys[active.slots, :, :width] = key
        values[active.slots, :, :width] = value
        return sdpa_attention_forward(
            module, query, key, value, None, scaling=scaling, is_causal=True
        )
    assert active.positions is not None and active.rows is not None and active.mask is not None
    rows = query.shape[0]
    keys[active.rows, :, active.positions] = key[:, :, 0]
    values[active.rows, :, active.positions] = value[:, :, 0]
    # One query token per row: the query heads that share a KV head become that head's
    # "query positions", so SDPA reads each cached key once, without repeating KV heads.
    heads, dim = query.shape[1], query.shape[3]
    grouped = query.reshape(rows, keys.shape[1], heads // keys.shape[1], dim)
    out = F.scaled_dot_product_attention(
        grouped,
        keys[:rows, :, : active.length],
        values[:rows, :, : active.length],
        attn_mask=active.mask,
        scale=scaling,
    )
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(ATTENTION, slot_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # for the plain-SDPA passes


def use_slot_attention(model: Any) -> None:
    """Route `model`'s attention through `slot_attention` (plain SDPA outside a slot pass)."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(ATTENTION)
    else:
        model.config._attn_implementation = ATTENTION


def _parts(model: Any) -> tuple[Any, Any]:
    return model.get_decoder(), model.get_output_embeddings()


@torch.inference_mode()
def prefill(
    model: Any, cache: SlotCache, prompts: Sequence[Sequence[int]], slots: Sequence[int]
) -> torch.Tensor:
    """Run `prompts` (one per slot, right-padded into one batch) into their slots.

    Returns each prompt's next-token logits (rows × vocab).
    """
    device = cache.device
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(list(prompt))
    ids = ids.to(device, non_blocking=True)
    last = torch.tensor([len(p) - 1 for p in prompts]).to(device, non_blocking=True)
    positions = torch.arange(width, device=device).unsqueeze(0).expand(len(prompts), -1)
    slot_ids = torch.tensor(list(slots)).to(device, non_blocking=True)
    decoder, head = _parts(model)
    _local.active = _Pass(cache, prefill=True, slots=slot_ids)
    try:
        hidden = decoder(
            input_ids=ids, position_ids=positions, attention_mask=NO_MASK, use_cache=False
        ).last_hidden_state
    finally:
        _local.active = None
    return head(hidden[torch.arange(len(prompts), device=device), last])  # type: ignore[no-any-return]


def decode(
    model: Any, cache: SlotCache, ids: torch.Tensor, positions: torch.Tensor, length: int
) -> torch.Tensor:
    """One token for each of slots 0..rows-1: `ids` written at `positions`; logits out.

    Pure tensor work with no host synchronisation, so it can be captured as a CUDA graph.
    """
    rows = ids.shape[0]
    decoder, head = _parts(model)
    span = torch.arange(length, device=ids.device)
    _local.active = _Pass(
        cache,
        prefill=False,
        positions=positions,
        rows=torch.arange(rows, device=ids.device),
        mask=(span.unsqueeze(0) <= positions.unsqueeze(1)).view(rows, 1, 1, length),
        length=length,
    )
    try:
        hidden = decoder(
            input_ids=ids.unsqueeze(1),
            position_ids=positions.unsqueeze(1),
            attention_mask=NO_MASK,
            use_cache=False,
        ).last_hidden_state
    finally:
        _local.active = None
    return head(hidden[:, -1])  # type: ignore[no-any-return]
