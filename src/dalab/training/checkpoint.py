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
from ..models.nets import DANNNet, build_model

MODEL_FORMAT = "dalab-model-v1"
CKPT_FORMAT = "dalab-ckpt-v1"


def save_atomic(obj, path: str | os.PathLike) -> None:
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
        raise CheckpointError(f"{path}: not a {expected_format} file (found {found!r})")
    return obj


def save_model(path, model: torch.nn.Module, config: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic({"format": MODEL_FORMAT, "config": dict(config), "state_dict": state}, path)


def load_model(path, device="cpu") -> tuple[DANNNet, dict]:
    """Rebuild the network from ``model.pt`` and load its weights."""
    obj = load_checked(path, MODEL_FORMAT)
    config = obj.get("config") or {}
    model = build_model(config)
    try:
        model.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0][:160]
        raise CheckpointError(f"{path}: weights do not fit the dalab network ({first})") from None
    return model.to(device).eval(), config
