"""AdamW that trains bf16 weights directly: stochastic rounding, bf16 moments, chunked math.

Why not torch's AdamW on fp32 master weights: for Qwen3-0.6B that is 2.4 GB of weights,
2.4 GB of gradients and 4.8 GB of moments before a single activation, over the 8 GiB a
32k-token step must fit in. Keeping weights and moments in bf16 halves that, but plain
round-to-nearest then loses every update smaller than half a bf16 ulp (about 0.4% of the
weight): at a learning rate of 2e-5 most updates vanish and training stalls. Stochastic
rounding keeps each update in expectation (unbiased), which is what bf16-only training needs.

The arithmetic is done in fp32 on slices of at most `chunk_elements` values, so the 155M
element embedding never needs a whole fp32 copy at once. Parameters that are not bf16 (fp32 on
CPU) get exact AdamW, equal to `torch.optim.AdamW` up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

_LOW_16 = -(1 << 16)  # 0xFFFF0000 as int32: clears the bits bf16 does not keep


def stochastic_round_bf16(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """fp32 → bf16, rounding up with probability equal to the dropped fraction."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(
        0, 1 << 16, bits.shape, device=x.device, dtype=torch.int32, generator=generator
    )
    return ((bits + noise) & _LOW_16).view(torch.float32).to(torch.bfloat16)


class BF16AdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float = 2e-5,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        chunk_elements: int = 1 << 24,
    ) -> None:
        if lr < 0 or eps <= 0 or not all(0 <= b < 1 for b in betas) or chunk_elements < 1:
            raise ValueError(
                f"BF16AdamW: need lr >= 0, eps > 0, 0 <= betas < 1, chunk_elements >= 1; "
                f"got lr={lr}, eps={eps}, betas={betas}, chunk_elements={chunk_elements}"
            )
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )
        self.chunk_elements = chunk_elements

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BF16AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                c1 = 1 - beta1**t
                c2 = 1 - beta2**t
                chunks = zip(
                    p.view(-1).split(self.chunk_elements),
                    p.grad.reshape(-1).split(self.chunk_elements),
                    state["exp_avg"].view(-1).split(self.chunk_elements),
                    state["exp_avg_sq"].view(-1).split(self.chunk_elements),
                    strict=True,
                )
                for w, g, m, v in chunks:
                    # .float() of an fp32 tensor is the tensor itself: every in-place op below
                    # on m32/v32 is an update of the state, never of a scratch copy.
                    g32 = g.float()
                    m32 = m.float().lerp_(g32, 1 - beta1)
                    v32 = v.float().mul_(beta2).addcmul_(g32, g32, value=1 - beta2)
                    m.copy_(m32)
                    v.copy_(v32)
                    update = (m32 / c1).div_((v32 / c2).sqrt_().add_(eps))
                    w32 = w.float()
                    if wd:
                        w32.mul_(1 - lr * wd)
                    w32.add_(update, alpha=-lr)
                    w.copy_(stochastic_round_bf16(w32) if w.dtype == torch.bfloat16 else w32)
        return loss
