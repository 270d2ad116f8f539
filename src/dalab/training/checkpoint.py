"""Checkpoints: written atomically, read only with ``torch.load(weights_only=True)``.

``model.pt`` (final model) holds ``{"format", "config", "state_dict"}``; ``ckpt.pt``
(resume point, every epoch) adds optimiser state, the epoch, RNG states and the metric
history. Configs hold plain Python values only, so ``weights_only=True`` loads them.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..data.io import atomic_write
from ..errors import CheckpointError
from ..models.registry import build_model

MODEL_FORMAT = "dalab-model-v1"
CKPT_FORMAT = "dalab-ckpt-v1"


def content_digest(obj) -> str:
    """sha256 of a checkpoint's content (nested dicts/lists, tensors by dtype, shape and bytes).

    Stored as ``obj["sha256"]`` and checked on load, it catches bytes changed inside a
    tensor, which ``torch.load`` itself would load silently. A checksum, not a signature:
    safety against code comes from ``weights_only=True``.
    """
    import hashlib

    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}:".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"V{x!r};".encode())

    feed({k: v for k, v in obj.items() if k != "sha256"})
    return h.hexdigest()


def save_atomic(obj, path: str | os.PathLike) -> None:
    if isinstance(obj, dict) and "format" in obj:
        obj = {**obj, "sha256": content_digest(obj)}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checked(path: str | os.PathLike, expected_format: str) -> dict:
    """Load a dalab file safely; any problem is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError,
            OSError, AttributeError, TypeError) as e:
        msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable dalab checkpoint (truncated, corrupt or "
                              f"unsafe: {msg})") from None
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        what = f"found {found!r}" if found is not None else "no 'format' key: not written by dalab"
        raise CheckpointError(f"{path}: not a {expected_format} file ({what})")
    if "sha256" in obj and obj["sha256"] != content_digest(obj):
        raise CheckpointError(f"{path}: content does not match its sha256 (the file was corrupted or "
                              "modified after dalab wrote it)")
    return obj


def save_model(path, model: torch.nn.Module, config: dict) -> None:
    """Write ``model.pt`` atomically: ``{"format", "config", "state_dict"}`` (weights on the CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic({"format": MODEL_FORMAT, "config": dict(config), "state_dict": state}, path)


def load_model(path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from ``model.pt`` and load its weights."""
    obj = load_checked(path, MODEL_FORMAT)
    config = obj.get("config") or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: malformed dalab model file (config is not a dict)")
    try:
        model = build_model(config)
    except (ValueError, TypeError) as e:  # a foreign or hand-edited config
        raise CheckpointError(f"{path}: config does not describe a dalab network ({e})") from None
    try:
        model.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0][:160]
        raise CheckpointError(f"{path}: weights do not fit the dalab network ({first})") from None
    return model.to(device).eval(), config
