"""What every task says about itself: the :class:`Task` interface.

A task is one object that owns everything that depends on what a label is:

- the label and its check (:meth:`Task.check_labels`), the supervised loss (:meth:`Task.loss`);
- the scores and the headline metric (:meth:`Task.evaluate`, :attr:`Task.metric`), and the
  fields they fill in a run's ``summary.json`` (:meth:`Task.score_fields`, :meth:`Task.score_keys`);
- the default recipe (:attr:`Task.recipe`) and network (:attr:`Task.archs`, :meth:`Task.build_model`);
- the label-free validators defined for it and their inputs (:meth:`Task.validator_inputs`);
- how predictions are written (:meth:`Task.predict_files`) and examples drawn (:meth:`Task.draw_examples`).

The trainer, the benchmark, ``dalab select`` and the command line ask the task, never its name.
A new task (regression, detection) is one module with a subclass, registered in
:mod:`dalab.tasks`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Iterable

import torch

SPLITS = ("source_val", "source_test", "target_test")  # the splits a run scores, as summary key prefixes


def finite_or_none(v):
    """``v`` where it is a finite number, else None: what a summary or a JSON file may hold (no NaN)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else None
    return v


class Task:
    """Base class; see the module docstring. Subclasses are stateless singletons."""

    name: ClassVar[str] = "task"
    #: the headline score's key in summaries (``{split}_{metric}``) and its name on screen
    metric: ClassVar[str] = "score"
    metric_name: ClassVar[str] = "score"
    #: TrainConfig fields whose defaults this task's runs change (the CLI and benchmark take them)
    recipe: ClassVar[dict] = {}
    #: dalab's own networks for this task (``--arch``); the first is the default
    archs: ClassVar[tuple[str, ...]] = ()
    #: label-free validators (``dalab select``) defined for this task
    validators: ClassVar[tuple[str, ...]] = ()
    #: per-pixel outputs (a map per image) rather than one per image
    dense: ClassVar[bool] = False
    #: images per evaluation batch of in-memory sets
    eval_batch: ClassVar[int] = 2048

    # ------------------------------------------------------------------ labels and loss
    def check_labels(self, y, name: str) -> torch.Tensor:
        """In-memory labels as the tensor the loss takes; a DalabError naming ``name`` otherwise."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Top-1 accuracy as a 0-dim tensor (per image, or per scored pixel)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ scores
    def evaluate(self, model, batches: Iterable, num_classes: int, precision: str = "fp32",
                 domain: str | None = None, class_names=None, reduce=None) -> dict:
        """Scores of ``model`` over (images, labels) batches: a dict holding :attr:`metric`.
        ``reduce`` (e.g. a sum over processes) is applied to the accumulated counts before scoring."""
        raise NotImplementedError

    def score_fields(self, split: str, scores: dict | None) -> dict:
        """The summary entries of one scored split (``split`` in :data:`SPLITS`); ``scores`` None: not scored."""
        return {f"{split}_{self.metric}": None if scores is None else finite_or_none(scores.get(self.metric))}

    def score_keys(self) -> list[str]:
        """Every score field a summary of this task holds (None where a split was not scored)."""
        keys: list[str] = []
        for s in SPLITS:
            keys += list(self.score_fields(s, None))
        return keys

    def format_score(self, v) -> str:
        """A score on screen: ``n/a`` for None."""
        return "  n/a " if v is None else f"{100 * v:6.2f}%"

    # ------------------------------------------------------------------ networks
    def build_model(self, arch: str, num_classes: int, batch_norm: bool, input_norm: str, domain_bn: bool):
        """dalab's network ``arch`` (one of :attr:`archs`) for this task."""
        from ..models import build_network

        return build_network(arch, num_classes=num_classes, batch_norm=batch_norm, input_norm=input_norm,
                             domain_bn=domain_bn)

    # ------------------------------------------------------------------ data read from files
    def train_options(self, cfg, labels: bool) -> dict:
        """The keyword arguments of a streamed split's training loader for a run configured by ``cfg``
        (``labels`` False: the loader need not read labels)."""
        raise NotImplementedError

    def eval_options(self, eval_size=None, image_size=None, labels: bool = True, transform: str = "standard") -> dict:
        """The keyword arguments of a streamed split's evaluation loader, from what a run recorded."""
        raise NotImplementedError

    # ------------------------------------------------------------------ label-free selection
    def validator_inputs(self, model, *, source_val, source_train, target, needed, num_classes: int,
                         seed: int = 0, raw_model=None) -> dict:
        """Keyword arguments of :func:`dalab.evaluation.validators.compute_validators` for ``needed``,
        from batches of source validation (images, labels), source training and target images
        (each an iterable of (images, labels) batches; target labels are never read). ``raw_model``:
        the run's last raw weights beside ``model`` (its weight average), for validators that compare
        the two (``teacher-agreement``); None where the run kept no such pair."""
        raise NotImplementedError

    # ------------------------------------------------------------------ predictions and figures
    prediction_columns: ClassVar[tuple[str, ...]] = ("path",)

    def predict_files(self, model, config: dict, files, out_dir=None) -> tuple[list[dict], list[tuple[str, str]]]:
        """(one row per predicted file, (path, error) per file that could not be read)."""
        raise NotImplementedError

    def draw_examples(self, split, path, n: int, seed: int, title: str | None) -> None:
        """A figure of ``n`` random examples of an in-memory split, written atomically to ``path``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name}>"
