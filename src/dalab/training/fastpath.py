"""Small pieces of the training step that cost more than they should on a CPU.

On a 2-core machine shared with other processes, every operation that PyTorch splits across
its threads waits for a second core, which can take milliseconds. ``bench/epoch_overhead.py``
found two such costs in the trainer's step, each larger than the network's own
work at times of load:

- gathering a batch of images with advanced indexing, ``x[idx]`` (a (N, 3, 28, 28) uint8 tensor,
  64 indices): an element-wise, multi-threaded kernel. :func:`take_rows` copies whole rows instead
  (``index_select`` on a 2-D view), with the same result;
- the optimiser's per-parameter update (three multi-threaded element-wise operations per
  parameter tensor): :func:`optimizer_kwargs` asks for PyTorch's fused SGD / Adam (one kernel per
  parameter), where this PyTorch has it for the device.
"""

from __future__ import annotations

import torch


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for a 1-D index along the first dimension, as a copy of whole rows."""
    if x.dim() > 1 and x.is_contiguous():
        return torch.index_select(x.view(x.shape[0], -1), 0, idx).view(idx.shape[0], *x.shape[1:])
    return torch.index_select(x, 0, idx)


def fused_supported(kind: str, device: torch.device) -> bool:
    """Whether ``torch.optim.<kind>(..., fused=True)`` works on ``device`` with this PyTorch."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind]
    p = torch.zeros(1, device=device, requires_grad=True)
    try:
        opt = cls([p], lr=0.1, fused=True)
        p.grad = torch.ones_like(p)
        opt.step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def optimizer_kwargs(kind: str, device: torch.device) -> dict:
    return {"fused": True} if fused_supported(kind, device) else {}
