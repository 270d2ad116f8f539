"""The method interface: one small object per algorithm, one ``loss`` per training step.

A method never owns the optimiser or the data loop (that is :mod:`dalab.training`); it
maps a :class:`Batch` to a scalar loss plus a few detached metrics. This keeps each
algorithm to a page and lets a user call it from their own training loop::

    method = DANN()
    loss, logs = method.loss(model, Batch(xs, ys, xt, p=step / total_steps))
    loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..tasks import accuracy  # noqa: F401  (re-exported: per-image or per-pixel top-1 accuracy)


@dataclass
class Batch:
    """One step's data. ``yt`` is only ever filled for methods with ``uses_target_labels``."""

    xs: torch.Tensor | None     # source images (B, 3, H, W), uint8 or float
    ys: torch.Tensor | None     # source labels (B,), or (B, H, W) uint8 label maps (see dalab.tasks)
    xt: torch.Tensor | None     # target images, unlabelled for adaptation methods
    yt: torch.Tensor | None = None
    p: float = 0.0              # training progress in [0, 1] (drives schedules)
    idx_t: torch.Tensor | None = None  # indices of ``xt`` in the target training set


class Method(nn.Module):
    """Base class: an ``nn.Module`` so a method may own parameters (a discriminator) or
    buffers (a teacher). The trainer optimises ``model.parameters()`` plus the method's
    own ``parameters()`` and checkpoints the method's ``state_dict()``.

    Subclasses set ``name`` and ``version`` and implement :meth:`loss`; hooks are optional. ``tasks``
    names the tasks a method is written for: the segmentation methods set ``("segmentation",)``.
    """

    name: ClassVar[str] = "base"
    uses_target: ClassVar[bool] = True          # needs unlabelled target images
    uses_target_labels: ClassVar[bool] = False  # oracle only: never true for UDA methods
    needs_domain_head: ClassVar[bool] = False
    #: relabels the whole target training set (``on_epoch_start``'s ``target_x``), so it needs it in memory
    needs_target_set: ClassVar[bool] = False
    #: the tasks (see :mod:`dalab.tasks`) whose labels and networks the method's loss handles
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: the version of the method's behaviour, declared by each method class: raised when a change makes
    #: runs of earlier versions wrong, so that ``dalab benchmark`` trains them again instead of reusing
    #: them (a run that records no version counts as version 1)
    version: ClassVar[int] = 1
    #: training options the method's published recipe sets (e.g. ``{"warmup": 0.0375}``): a run takes them
    #: where the user leaves the setting to the method (TrainConfig's None)
    recipe: ClassVar[dict] = {}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once before training (build modules that depend on the model)."""

    def on_epoch_start(self, model: nn.Module, epoch: int, target_x: torch.Tensor | None) -> dict:
        """Called before each epoch with the whole unlabelled target training set.

        Returns metrics to record (floats); e.g. pseudo-labelling relabels here.
        """
        return {}

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimiser step (e.g. an EMA teacher update)."""

    def rng_state(self) -> dict:
        """The state of every ``torch.Generator`` the method holds as an attribute (saved in checkpoints,
        so that a resumed run draws the same masks and augmentations as an uninterrupted one)."""
        return {k: g.get_state() for k, g in vars(self).items() if isinstance(g, torch.Generator)}

    def set_rng_state(self, state: dict) -> None:
        for k, st in state.items():
            g = getattr(self, k, None)
            if isinstance(g, torch.Generator):
                g.set_state(st)

    def describe(self) -> dict:
        """Hyper-parameters worth recording in summaries."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and isinstance(v, (int, float, str, bool))}

