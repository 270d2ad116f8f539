"""Live training logs as TensorBoard event files (optional: ``pip install tensorboard``).

:class:`TensorBoardLogger` is a ``logger`` for :class:`~dalab.training.trainer.Trainer`:
the trainer calls it with each evaluated epoch's metrics row, the same row it appends to
``metrics.jsonl``. Every numeric entry becomes a scalar at ``global_step = row["step"]``
(optimiser steps so far), grouped by kind so TensorBoard draws related curves together:

- ``loss/``: ``task_loss``, ``domain_loss`` and any other ``*_loss`` (epoch means);
- ``accuracy/``: ``train_acc``, ``domain_acc`` (the domain classifier's accuracy; 0.5
  means the features no longer tell the domains apart), ``source_val_acc``,
  ``source_test_acc``, ``target_test_acc`` and any other ``*_acc``;
- ``schedule/``: ``lr`` and ``lambda`` (the GRL strength);
- ``other/``: everything else numeric (e.g. pseudo-label counts, ``train_seconds``).

Events are flushed after each row, so ``tensorboard --logdir OUT/tb`` shows a run live.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import DalabError

INSTALL_HINT = "--tensorboard needs the tensorboard package: pip install tensorboard (or pip install 'dalab[tensorboard]')"


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def scalar_tag(key: str) -> str:
    """``task_loss`` -> ``loss/task_loss``, ``target_test_acc`` -> ``accuracy/target_test_acc``, ..."""
    if key.endswith("_loss") or key == "loss":
        return f"loss/{key}"
    if key.endswith("_acc"):
        return f"accuracy/{key}"
    if key in ("lr", "lambda"):
        return f"schedule/{key}"
    return f"other/{key}"


class TensorBoardLogger:
    """``callable(row)`` writing each numeric metric of ``row`` to TensorBoard event files in ``logdir``.

    Raises a one-line :class:`~dalab.errors.DalabError` naming ``pip install tensorboard``
    at construction if the package is missing (so a run fails before it trains). The folder
    and event file are created at the first row, so a run refused for other reasons leaves
    nothing behind; ``purge=True`` then first deletes older event files there (a run
    started again with ``--overwrite``). Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, logdir: str | os.PathLike, purge: bool = False):
        if not tensorboard_available():
            raise DalabError(INSTALL_HINT)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard present but broken / too old
            raise DalabError(f"{INSTALL_HINT} ({e})") from None
        self._writer_cls = SummaryWriter
        self.logdir = Path(logdir)
        self.purge = purge
        self.writer = None

    def _open(self):
        if self.writer is None:
            if self.purge and self.logdir.is_dir():
                for f in self.logdir.glob("events.out.tfevents.*"):
                    f.unlink()
            self.writer = self._writer_cls(log_dir=str(self.logdir))
        return self.writer

    def __call__(self, row: dict) -> None:
        writer = self._open()
        step = int(row.get("step", row.get("epoch", 0)))
        for k, v in row.items():
            if k in ("step",) or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(float(v)):
                continue
            writer.add_scalar(scalar_tag(k), float(v), global_step=step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
