"""Training: config, the single trainer, checkpoints."""

from .checkpoint import load_model, save_model
from .config import TrainConfig
from .trainer import Trainer, ganin_lr, resolve_device, train

__all__ = ["TrainConfig", "Trainer", "train", "ganin_lr", "resolve_device", "load_model", "save_model"]
