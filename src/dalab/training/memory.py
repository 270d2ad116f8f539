r"""Will the first training step fit in memory? An estimate made before it runs, so that a run too
large for the machine stops with one line instead of being killed by the system (or by CUDA) later.

The memory a step needs is dominated by the activations autograd keeps for the backward pass.
They are counted exactly on a probe: one forward pass of the method's loss on copies of the network
and the method, with a small batch of ``probe`` images per domain at a small size :math:`(h, w)`,
summing the bytes of the tensors saved for backward (``torch.autograd.graph.saved_tensors_hooks``),
each memory block once however many views of it are saved, and never the parameters or buffers
(which layers save beside their inputs, and which do not grow with the pixels).
Activations grow with the number of pixels, so the step at batch :math:`B` and size :math:`(H, W)`
needs about

.. math::

    M \approx M_{\text{probe}} \cdot \frac{B\,H\,W}{b\,h\,w} + 4\,P

bytes (:math:`P` the parameters of network and method: weights, gradients and two optimiser moments).
The run stops when :math:`M` exceeds the memory available: ``MemAvailable`` of ``/proc/meminfo`` on the
CPU, ``torch.cuda.mem_get_info`` on a GPU. The probe leaves the run untouched (copies, every random
generator restored). Where the memory available cannot be read, nothing is checked.
"""

from __future__ import annotations

import copy

import torch

from ..errors import DalabError
from .device import rng_preserved

PROBE_SIDE = 64  # the probe's images: at most 64 x 64 pixels (smaller when the run's are)
PROBE_BATCH = 2


def available_bytes(device: torch.device) -> int | None:
    """Memory free for the run on ``device``; None when it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    """(address, bytes) of the memory block behind ``t``, shared by all its views; None without one."""
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):
        return None


def probe_bytes(model, method, batch_fn, shape) -> tuple[int, int]:
    """(bytes of activations saved for backward by one forward of ``method.loss`` on copies, pixels per
    domain in the probe). ``batch_fn(n, (h, w))`` builds the probe's :class:`~dalab.methods.Batch` of
    ``n`` images per domain. Each memory block is counted once, however many views of it are saved, and
    the parameters (which layers save beside their inputs, and which do not grow with the pixels) are
    not counted: they enter the estimate once, in :func:`check_first_step`."""
    h, w = (min(PROBE_SIDE, s) for s in shape[-2:])
    saved, seen = [0], set()

    def pack(t):
        block = _storage(t)
        if block is not None and block[0] not in seen:
            seen.add(block[0])
            saved[0] += block[1]
        return t

    with rng_preserved():
        m, meth = copy.deepcopy(model), copy.deepcopy(method)
        m.train()
        for p in list(m.parameters()) + list(meth.parameters()) + list(m.buffers()) + list(meth.buffers()):
            block = _storage(p)
            if block is not None:
                seen.add(block[0])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            meth.loss(m, batch_fn(PROBE_BATCH, (h, w)))
    return saved[0], PROBE_BATCH * h * w


def check_first_step(model, method, batch_fn, shape, batch: int, device) -> str | None:
    """A one-line DalabError when the first step of ``batch`` images per domain of ``shape`` (C, H, W) would
    not fit in the memory available; returns the estimate (for the summary) otherwise, or None when it
    cannot be made."""
    free = available_bytes(device)
    if free is None or shape is None:
        return None
    try:
        saved, pixels = probe_bytes(model, method, batch_fn, shape)
    except Exception:  # noqa: BLE001  a network or method the probe cannot copy or run: no estimate, no refusal
        return None
    params = sum(p.numel() * p.element_size() for p in list(model.parameters()) + list(method.parameters()))
    need = saved * (batch * shape[-2] * shape[-1]) / max(pixels, 1) + 4 * params
    text = (f"about {need / 2**30:.2f} GiB for the first step ({batch} images of {shape[-2]}x{shape[-1]} per domain), "
            f"{free / 2**30:.2f} GiB available")
    if need > free:
        raise DalabError(f"the run would not fit in memory: {text}; use a smaller --crop / --image-size or "
                         "--batch-size")
    return text
