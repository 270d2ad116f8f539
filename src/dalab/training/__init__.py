"""Training: config, the single trainer, checkpoints."""

from .checkpoint import load_model, save_model
from .config import TrainConfig
from .device import resolve_device
from .trainer import Trainer, ganin_lr, train
from .in_memory import FitResult, TensorData, fit
from .tensorboard import TensorBoardLogger

__all__ = ["TrainConfig", "Trainer", "train", "ganin_lr", "resolve_device", "load_model", "save_model",
           "fit", "FitResult", "TensorData", "TensorBoardLogger"]
