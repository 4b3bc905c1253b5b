"""Liger-Kernel's fused RMSNorm, RoPE and SwiGLU in a serving model, where they are installed.

A decode step of a small model is bound by the number of kernels it runs more than by
arithmetic: transformers' eager RMSNorm is about seven kernels, its RoPE about ten, each a
few microseconds even inside a CUDA graph. Liger's Triton kernels do each in one. Optional
(the `cuda` extra); without it, or on a CPU, the model is left as it is.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def use_fused_kernels(model: Any) -> bool:
    """Swap in Liger's RMSNorm, RoPE and SwiGLU on a CUDA model; True if it was done."""
    if next(model.parameters()).device.type != "cuda":
        return False
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    try:
        _apply_liger_kernel_to_instance(
            model=model,
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    except Exception as exc:  # an architecture Liger does not know: serve it as it is
        log.warning("Liger kernels not applied (%s); the model runs unfused", exc)
        return False
    return True
