"""The KV-cache side of a running batch: left-padded prefill, joining rows, dropping rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class BatchCache:
    """The KV cache, attention mask and next positions of the rows generating together.

    Every row's cache has the same length (left padding, masked out), so one decode step
    feeds one token per row. Positions are per row: a row's padding never shifts them.
    """

    cache: DynamicCache
    mask: torch.Tensor  # (rows, cached length): 1 where a real token is cached
    next_pos: torch.Tensor  # (rows, 1): the position of each row's next token

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def keep(self, indices: Sequence[int]) -> None:
        """Drop every row not in `indices` (finished requests leave the batch)."""
        index = torch.tensor(list(indices), device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]

    def join(self, other: BatchCache) -> None:
        """Append `other`'s rows, left-padding whichever cache is shorter (masked out).

        Keys are cached after the rotary embedding, so padding on the left moves no position.
        """
        mine, theirs = self.mask.shape[1], other.mask.shape[1]
        width = max(mine, theirs)
        layers = getattr(self.cache, "layers", None)
        other_layers = getattr(other.cache, "layers", None)
        if layers is None or other_layers is None or len(layers) != len(other_layers):
            raise RuntimeError("this transformers version's DynamicCache has no joinable layers")
        for a, b in zip(layers, other_layers, strict=True):
            a.keys = torch.cat([_pad_left(a.keys, width), _pad_left(b.keys, width)], dim=0)
            a.values = torch.cat([_pad_left(a.values, width), _pad_left(b.values, width)], dim=0)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)], dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos], dim=0)

    def step(self, model: Any, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per row; returns the next-token logits (rows × vocab)."""
        device = self.mask.device
        ids = torch.tensor([[t] for t in tokens], device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=-1)
        out = model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=self.next_pos,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :]  # type: ignore[no-any-return]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    # (rows, heads, length, dim) → (rows, heads, width, dim)
    missing = width - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
    return torch.cat([pad, t], dim=2)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


def prefill(
    model: Any, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[BatchCache, torch.Tensor]:
    """Run the prompts left-padded as one batch; returns their cache and next-token logits."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
        mask[row, width - len(prompt) :] = 1
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
    return BatchCache(cache, mask, positions[:, -1:] + 1), out.logits[:, -1, :]
