"""Which device a run trains on, and how that device is named in summaries."""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from ..errors import DalabError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, else Apple's MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a one-line
    error for a device this machine does not have. (MPS is only mocked in dalab's tests, untested on a Mac.)"""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if name == "mps":
        if not _mps_available():
            raise DalabError("--device mps: Apple's MPS backend is not available on this machine (use cpu or auto)")
        return torch.device("mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DalabError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DalabError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def rng_preserved():
    """Run a block that draws random numbers (a probe or a measurement on copies) without moving the
    run's CPU and CUDA generators: their states are restored after it."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
