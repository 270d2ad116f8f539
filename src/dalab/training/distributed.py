"""Multi-process training through ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc-per-node N -m dalab train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; the trainer then:

- joins the process group (NCCL on CUDA, gloo on CPU) and uses ``cuda:LOCAL_RANK``;
- wraps one training step (the method's loss on the model) in
  :class:`~torch.nn.parallel.DistributedDataParallel`, which all-reduces (averages)
  gradients across ranks during ``backward``;
- draws the *same* random permutation on every rank (same seed) and gives rank ``r``
  the ``r``-th slice of each global batch: ``--batch-size B`` stays the *global* batch per
  domain, each rank sees ``B / N`` source and ``B / N`` target images per step, so the
  number of steps, the schedules and (for losses that are batch means, e.g. DANN's CE +
  BCE) the gradient are those of the single-process run with batch ``B``;
- averages the logged metrics across ranks; only rank 0 writes files.

What differs from one process: batch statistics (batch norm, MCC's class-confusion
matrix, the domain-classifier accuracy of a step) are computed per rank over ``B / N``
images, and float reductions happen in another order (results match a single-process run
to float tolerance, not bit for bit).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DalabError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Read torchrun's environment; a plain ``python`` run gives world size 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DalabError("RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun)") from None
    return DistInfo(rank, world, local)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)


class StepModule(nn.Module):
    """``forward(batch) = method.loss(model, batch)``: the unit DDP wraps."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch):
        return self.method.loss(self.model, batch)


def wrap_step(model: nn.Module, method: nn.Module, info: DistInfo, device: torch.device,
              every_parameter_used: bool = False):
    """A callable ``batch -> (loss, logs)``; DDP-wrapped when running under torchrun.

    ``every_parameter_used``: every parameter of the model and the method gets a gradient in each
    step (e.g. DANN on a DANNNet), so DDP need not search the graph for unused ones after each
    forward pass (``find_unused_parameters=False``). Otherwise (source-only never touches the domain
    head, CDAN has its own discriminator instead) it must.
    """
    step = StepModule(model, method)
    if not info.enabled:
        return step
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(step, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=not every_parameter_used)


def all_mean(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Average a dict of scalar tensors over ranks (one all-reduce)."""
    if not info.enabled or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    flat = torch.stack([values[k].float().reshape(()) for k in keys])
    dist.all_reduce(flat)
    flat /= info.world_size
    return {k: flat[i] for i, k in enumerate(keys)}


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor (e.g. a confusion matrix) over ranks; itself with one process."""
    if not info.enabled:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t


def all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    """True when the loss is finite on every rank (so all ranks stop together)."""
    if not info.enabled:  # one read of the scalar instead of four small operations
        return math.isfinite(loss.detach().float().item())
    ok = torch.isfinite(loss.detach()).all().float().reshape(1)
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def broadcast_choice(choice, info: DistInfo):
    """Rank 0's value (e.g. the precision it measured) on every rank, so all ranks train alike."""
    if not info.enabled:
        return choice
    import torch.distributed as dist

    box = [choice]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
