"""Data-parallel training under torchrun: the process group, which rank leads, and the order
the lead sends the others before each file (what to train, from where).

DDP, not FSDP2: Qwen3-0.6B with its AdamW moments fits every card whole (about 5 GiB in bf16),
so sharding would only add an all-gather per layer; DDP keeps the model, the optimizer and the
checkpoint format exactly as on one GPU (rank 0 saves the unwrapped model), and its bucketed
all-reduce overlaps the backward.

The lead (rank 0) alone talks to Redis and writes to disk: it takes the RQ job, validates the
file and broadcasts a `FileOrder`; every rank then reads the same packed steps and runs its
share of each step's micro-batches. Single-process training never imports torch.distributed
state: `Group.start()` returns None when WORLD_SIZE is unset or 1.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from services.trainer.dataset_reader import DataCursor

log = logging.getLogger(__name__)

# The step's collectives wait this long: between steps the lead alone samples, evaluates and
# writes checkpoints while the others already wait at the next step's all-reduce.
STEP_TIMEOUT = timedelta(hours=1)
# The others wait for the lead's next order as long as the queues stay empty.
IDLE_TIMEOUT = timedelta(days=365)


@dataclass(frozen=True)
class FileOrder:
    """What the lead tells the others before it trains a file: the same rows, from the same
    cursor, with the same random state (BF16AdamW's stochastic rounding draws from it)."""

    path: str
    name: str
    job_id: str | None
    sha256: str
    start: DataCursor | None  # the resume cursor; None: from the top of the file
    epoch: int  # the epoch the cursor is in
    rejected_offsets: tuple[int, ...]  # from the lead's validation: lines no rank trains
    cpu_rng: torch.Tensor
    device_rng: torch.Tensor | None  # the lead's CUDA generator; set on each rank's own card
    # The run's codebook (Codebook.to_json) when it has code tokens: a rank that has none yet
    # adds the same codes before the file's first step, as the lead did before sending this.
    codebook: dict[str, Any] | None = None


# What a collective raises when a peer is gone: torch's own DistError, or a RuntimeError from
# the backend (DDP's gradient hooks re-raise gloo's "Connection closed by peer" as one).
_PEER_FAILURES = ("gloo", "nccl", "connection closed by peer", "processgroup", "c10d")


def peer_failure(exc: BaseException) -> bool:
    """True when `exc` says the group broke (a rank died), not that this rank's code failed."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _PEER_FAILURES)


class Group:
    """This process's place among torchrun's ranks, and the few collectives the loop needs."""

    def __init__(
        self, rank: int, world: int, device: torch.device, control: dist.ProcessGroup
    ) -> None:
        self.rank = rank
        self.world = world
        self.device = device
        self._control = control  # gloo, long timeout: orders and barriers, never tensors of a step

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device_type: str | None = None) -> Group | None:
        """Join torchrun's group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from its
        environment): nccl on CUDA, gloo on CPU. None when WORLD_SIZE is unset or 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=STEP_TIMEOUT)
        control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        log.info("rank %d of %d on %s", rank, world, device)
        return cls(rank, world, device, control)

    def close(self) -> None:
        dist.destroy_process_group()

    def barrier(self) -> None:
        dist.barrier(group=self._control)

    # -- orders ------------------------------------------------------------------------------

    def send_order(self, order: FileOrder | None) -> None:
        """The lead: the next file to train, or None to tell the others to exit."""
        dist.broadcast_object_list([order], src=0, group=self._control)

    def receive_order(self) -> FileOrder | None:
        """The others: wait for the lead's next order (as long as the queues are empty)."""
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        order: FileOrder | None = box[0]
        return order

    def rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), device

    def set_rng_state(self, order: FileOrder) -> None:
        torch.set_rng_state(order.cpu_rng)
        if order.device_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(order.device_rng, self.device)

    # -- the step ----------------------------------------------------------------------------

    def wrap(self, model: nn.Module, forward: Any) -> DistributedDataParallel:
        """DDP over `model`'s parameters, with the micro-batch's forward (StepForward, which
        runs the decoder and the loss head itself) as its forward. Rank 0's weights are
        broadcast to the others here."""
        # No buffer broadcast before each forward (no batch statistics here; the rotary
        # tables are equal everywhere): a forward must hold no collective, so a rank that
        # skips one after an out-of-memory cannot cross the others' collectives.
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_buffer_sync: dict[str, Any] = (
            {"forward_sync_buffers": False}  # torch >= 2.13's name
            if "forward_sync_buffers" in params
            else {"broadcast_buffers": False}
        )
        return DistributedDataParallel(
            _StepModule(model, forward),
            device_ids=None,  # inputs are already on the device; DDP must not walk the batch
            gradient_as_bucket_view=True,  # no second copy of the gradients
            **no_buffer_sync,
        )

    def all_ok(self, ok: bool) -> bool:
        """True when every rank says ok: out-of-memory is agreed before the synchronising
        backward, so all ranks back off together and none waits in a lone all-reduce."""
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item() == 0)

    def step_figures(
        self, local: torch.Tensor, entropy_tokens: int, stop: bool
    ) -> tuple[list[float], int, bool]:
        """Sum the step's loss and entropy over ranks (`local`: loss sum, entropy sum, grad
        norm, the last equal everywhere after DDP's all-reduce), and agree on a stop."""
        extra = torch.tensor([float(entropy_tokens), float(stop)], device=local.device)
        summed = torch.cat([local[:2], extra])
        dist.all_reduce(summed)
        loss, entropy, tokens, stops, norm = torch.cat([summed, local[2:]]).tolist()
        return [loss, entropy, norm], int(tokens), stops > 0


class _StepModule(nn.Module):
    """What DDP wraps: the model as a submodule (DDP syncs its parameters' gradients) and one
    micro-batch's forward and loss as `forward`."""

    def __init__(self, model: nn.Module, forward: Any) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch: Any) -> Any:
        return self._forward(batch)
