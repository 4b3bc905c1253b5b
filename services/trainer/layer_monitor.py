"""Per-layer gradient and update norms every N steps, for `layer_activity_summary`."""

from __future__ import annotations

import re

import torch
from torch import nn

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(name: str) -> str:
    """The group a parameter is reported under: `layer_07`, or `embed`, `norm`, `head`, `other`."""
    found = _LAYER.search(name)
    if found:
        return f"layer_{int(found.group(1)):02d}"
    if "embed" in name:
        return "embed"
    if "lm_head" in name:
        return "head"
    if "norm" in name:
        return "norm"
    return "other"


class LayerMonitor:
    """Call `before_step()` after backward (gradients present) and `after_step()` after the
    optimizer step, on monitored steps only: the summary maps each layer to its gradient
    norm, update norm, weight norm and update/weight ratio.

    The pre-step weights are copied to the CPU, so a monitored step costs one model-sized
    copy in host memory, never in GPU memory; on other steps the monitor costs nothing.
    """

    def __init__(self, model: nn.Module, every: int) -> None:
        self.every = every
        self.groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        seen: set[int] = set()
        for name, param in model.named_parameters():
            # Tied weights (embedding = head) appear once, under their first name.
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            self.groups.setdefault(layer_of(name), []).append((name, param))
        self._before: dict[str, torch.Tensor] = {}
        self._grad: dict[str, float] = {}

    def due(self, step: int) -> bool:
        """Whether `step` (the number the step will have once taken) is monitored."""
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def before_step(self) -> None:
        self._before.clear()
        self._grad.clear()
        for group, params in self.groups.items():
            squares = 0.0
            for name, param in params:
                if param.grad is not None:
                    squares += float(param.grad.detach().float().pow(2).sum())
                self._before[name] = param.detach().to("cpu", dtype=torch.float32, copy=True)
            self._grad[group] = squares**0.5

    @torch.no_grad()
    def after_step(self) -> dict[str, dict[str, float]]:
        if not self._before:
            raise RuntimeError("LayerMonitor.after_step() without before_step() on this step")
        summary: dict[str, dict[str, float]] = {}
        for group, params in self.groups.items():
            update_sq = weight_sq = 0.0
            for name, param in params:
                now = param.detach().to("cpu", dtype=torch.float32)
                update_sq += float((now - self._before[name]).pow(2).sum())
                weight_sq += float(now.pow(2).sum())
            weight = weight_sq**0.5
            summary[group] = {
                "grad_norm": self._grad[group],
                "update_norm": update_sq**0.5,
                "weight_norm": weight,
                "update_ratio": update_sq**0.5 / weight if weight > 0 else 0.0,
            }
        self._before.clear()
        return summary
