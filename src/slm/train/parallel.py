"""How the training model is laid out over processes: the one place the trainer's parallelism is chosen.

Today that is plain data parallelism (DDP) or nothing; this is the slot a sharded layout (FSDP2) fills later, behind
the same two calls: `parallelize` wraps the (possibly compiled) model, `ParallelModel.micro_batch(last=)` is the
context for one accumulation micro-batch's forward and backward.

Decisions:
- DDP wraps the compiled module (DDP(compile(model))), and DDP is created only when the run is distributed, so a
  single process trains the bare (or compiled) model with no wrapper in the way.
- `broadcast_buffers=False`: the model's buffers (RoPE tables, causal masks) are constants every rank builds alike, so
  the per-step broadcast would only cost time. `device_ids` is set on CUDA (one device per process) and left out on
  CPU, where the process group is gloo.
- Gradient accumulation all-reduces once per optimizer step: every micro-batch but the last runs under DDP's
  `no_sync`, so grads pile up locally and the last backward averages the sum.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from ..runtime import DistInfo


@dataclass(frozen=True)
class ParallelModel:
    """The module the loss runs through, and how its gradients synchronise."""

    module: torch.nn.Module  # DDP(model) when distributed, else the model itself
    distributed: bool

    def micro_batch(self, last: bool) -> ContextManager:
        """Context for one micro-batch's forward + backward: no gradient all-reduce unless it is the step's last."""
        if self.distributed and not last:
            return self.module.no_sync()
        return contextlib.nullcontext()


def parallelize(model: torch.nn.Module, dist: DistInfo) -> ParallelModel:
    """Wrap `model` (possibly torch.compile'd) for the run's process layout."""
    if not dist.enabled:
        return ParallelModel(model, distributed=False)
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = dist.device
    wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    return ParallelModel(wrapped, distributed=True)
