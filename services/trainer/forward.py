"""One micro-batch's forward pass and loss, run the fastest way this device allows.

On CUDA: the documents' attention through PyTorch's varlen kernel (attention.py), the decoder
compiled once on the packed rows' fixed shapes, and Liger-Kernel's fused linear cross-entropy
on the loss positions only (optionally its RMSNorm / RoPE / SwiGLU too). Liger rather than
cut-cross-entropy: it also brings those Qwen3 kernels, and it is the yardstick's (TRL's) own
kernel, so a comparison measures our step and not a different loss kernel.

On CPU (Liger's kernels are Triton, varlen is flash): sdpa from the position ids, eager, and
the hand-written chunked loss (loss.py). Both paths take the loss positions and document
boundaries the packer computed on the host, so neither asks the device for a count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from services.trainer.attention import VARLEN, register_varlen, varlen_available, varlen_kwargs
from services.trainer.config import TrainerSettings
from services.trainer.loss import chunked_cross_entropy
from services.trainer.packing import PackedBatch

log = logging.getLogger(__name__)

# The entropy metric is read from this many loss tokens per micro-batch (no gradient): a
# sample, because Liger's loss does not return it and a full pass would cost a second head GEMM.
ENTROPY_TOKENS = 512


def liger_available() -> bool:
    """True where Liger-Kernel can run: installed (the `cuda` extra) and a CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class StepPlan:
    """How micro-batches run here, resolved once from the settings and the device."""

    attention: str  # "varlen", "flex_attention" or "sdpa"
    compile: bool
    liger_loss: bool
    liger_layers: bool  # Liger's RMSNorm, RoPE and SwiGLU in place of the model's

    def describe(self) -> str:
        liger = "all" if self.liger_layers else "loss" if self.liger_loss else "off"
        return f"attention={self.attention} compile={self.compile} liger={liger}"

    @classmethod
    def resolve(cls, settings: TrainerSettings, device: torch.device) -> StepPlan:
        cuda = device.type == "cuda"
        attention = settings.attention
        if attention == "auto":
            attention = "varlen" if cuda and varlen_available() else "sdpa"
        elif attention == "varlen" and not (cuda and varlen_available()):
            raise ValueError(
                "R3_ATTENTION=varlen needs a CUDA device and torch >= 2.10 "
                "(torch.nn.attention.varlen); use sdpa or flex_attention here"
            )
        compiled = settings.compile == "on" or (settings.compile == "auto" and cuda)
        liger = settings.liger
        if liger == "auto":
            liger = ("loss" if compiled else "all") if liger_available() and cuda else "off"
        elif liger != "off" and not liger_available():
            raise ValueError(
                f"R3_LIGER={liger} needs Liger-Kernel and a CUDA device: install the `cuda` "
                "extra (pip install 'regime3[cuda]') or set R3_LIGER=off"
            )
        return cls(attention, compiled, liger != "off", liger == "all")


@dataclass(frozen=True)
class MicroBatchLoss:
    """Device tensors only, so a step reads them once, at its end."""

    loss_sum: torch.Tensor  # scalar fp32, differentiable: summed over the loss tokens
    entropy_sum: torch.Tensor  # scalar fp32, no gradient: summed over `entropy_tokens`
    entropy_tokens: int


class StepForward:
    """Prepares the model once for its plan (attention, Liger, compile) and runs micro-batches.

    The compiled decoder is held here, beside the model: the model's modules, names and
    state dict are unchanged, and generation (sampling, evaluation) runs it eagerly.
    """

    def __init__(
        self, model: nn.Module, plan: StepPlan, *, chunk_tokens: int, max_length: int
    ) -> None:
        self.model = model
        self.plan = plan
        self.chunk_tokens = chunk_tokens
        self.max_length = max_length
        head = model.get_output_embeddings()  # type: ignore[operator]
        if not isinstance(head, nn.Linear) or head.bias is not None:
            raise TypeError(
                f"{type(model).__name__}: need a causal LM with a bias-free linear head"
            )
        self.head: nn.Linear = head
        if plan.attention == "varlen":
            register_varlen()
            model.set_attn_implementation(VARLEN)
        elif plan.attention != getattr(model.config, "_attn_implementation", None):
            model.set_attn_implementation(plan.attention)
        if plan.liger_layers:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(
                model=model, fused_linear_cross_entropy=False, cross_entropy=False
            )
        self.decoder: Any = None
        self.refresh()

    def refresh(self) -> None:
        """Take the model's current head and decoder (compiled again): after code tokens
        resized the embedding, the old compiled graph and head would hold the old matrix."""
        head = self.model.get_output_embeddings()  # type: ignore[operator]
        if not isinstance(head, nn.Linear) or head.bias is not None:
            raise TypeError(
                f"{type(self.model).__name__}: need a causal LM with a bias-free linear head"
            )
        self.head = head
        decoder = self.model.get_decoder()
        self.decoder = torch.compile(decoder, dynamic=False) if self.plan.compile else decoder

    def __call__(self, batch: PackedBatch, *, with_entropy: bool = True) -> MicroBatchLoss:
        if batch.loss_index is None or batch.loss_targets is None:
            raise ValueError("StepForward needs a batch from packing.collate (loss positions)")
        kwargs: dict[str, Any] = {}
        if self.plan.attention == "varlen":
            if batch.cu_seqlens is None:
                raise ValueError("varlen attention needs the batch's document boundaries")
            kwargs = varlen_kwargs(batch.cu_seqlens, batch.input_ids.shape[1])
        out = self.decoder(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kwargs
        )
        hidden = out.last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.loss_index)
        weight = self.head.weight
        tokens = int(batch.loss_index.shape[0])  # a shape: known on the host, no sync
        if self.plan.liger_loss:
            loss_sum = self._liger_loss(selected, weight, batch.loss_targets)
        else:
            loss_sum, _ = chunked_cross_entropy(
                selected, weight, batch.loss_targets, chunk_tokens=self.chunk_tokens
            )
        count = min(tokens, ENTROPY_TOKENS) if with_entropy else 0
        entropy = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if count:
            with torch.no_grad():
                _, entropy = chunked_cross_entropy(
                    selected[:count].detach(),
                    weight.detach(),
                    batch.loss_targets[:count],
                    chunk_tokens=256,
                    with_entropy=True,
                )
        return MicroBatchLoss(loss_sum.float(), entropy.float(), count)

    def _liger_loss(
        self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        # Liger's chunk is about rows / ceil(V / (c * H)) tokens; choose c so that it is near
        # R3_LOSS_CHUNK_TOKENS (its default, c = 1, gives 64-token GEMMs that waste the GPU).
        rows, width = hidden.shape
        vocab = weight.shape[0]
        factor = max(1, math.ceil(self.chunk_tokens * vocab / (max(rows, 1) * width)))
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            loss: torch.Tensor = liger_fused_linear_cross_entropy(
                hidden,
                w,
                targets,
                reduction="sum",
                accum_dtype=torch.float32,
                chunk_mem_const=factor,
            )
        return loss
