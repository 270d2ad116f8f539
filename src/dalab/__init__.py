r"""dalab: unsupervised domain adaptation in PyTorch, offline and with an honest protocol.

The public API reads like Ganin & Lempitsky (2015). Everything below is importable from
the top package (``from dalab import DANN``); the names are resolved lazily, so
``import dalab`` itself loads neither torch nor matplotlib.

Domains (labelled source, unlabelled target)
    ``load_domain("mnistm")`` -> :class:`Domain` with splits ``train/val/test``;
    ``domain["train"].tensors()`` -> (N, 3, 28, 28) uint8 images and (N,) labels,
    ``domain["train"].dataset()`` -> a ``torch.utils.data.TensorDataset``. ``DOMAINS`` lists them.

Gradient reversal layer :math:`R_\lambda`
    Forward :math:`R_\lambda(x) = x`, backward :math:`\partial R_\lambda / \partial x = -\lambda I`.
    ``grad_reverse(x, lambd)`` (functional), ``GradientReversal(lambd)`` (module),
    ``ganin_lambda(p)`` / ``LambdaSchedule`` (:math:`\lambda_p = \lambda_{max}(2/(1+e^{-\gamma p}) - 1)`).

The DANN network :math:`C(F(x))` with :math:`D(R_\lambda(F(x)))`
    ``FeatureExtractor`` (green), ``LabelHead`` (blue), ``DomainHead`` (pink), assembled by
    ``DANNNet``; ``DANNNet(feature_extractor=your_module, feature_dim=D)`` takes any backbone.
    Segmentation: ``SegNet`` (the small default) and ``SegmentationNet(feature_extractor=...,
    feature_dim=C)`` for any backbone that maps images to a (B, C, h, w) feature map.

Tasks
    ``task_loss(logits, y)`` is cross-entropy per image (y (B,)) or per scored pixel (y (B, H, W)
    uint8, 255 ignored); ``evaluate_model`` gives accuracy, or mIoU from ``confusion_matrix`` and
    ``scores_from_confusion`` over every pixel.

Methods: one loss per step, usable in your own loop
    ``loss, logs = DANN().loss(model, Batch(xs, ys, xt, p=step / total))``. ``SourceOnly``,
    ``DANN``, ``NoGRL`` (the practical's question 1), ``TargetOnly`` (oracle) and every other
    registered method (``METHODS``, ``make_method(name)``), e.g. ``PseudoLabel`` (question 4).

Training and evaluation
    ``fit(model, method, xs, ys, xt, ...)`` trains on in-memory tensors; ``Trainer`` /
    ``train(TrainConfig(...), out)`` on registered domains (what ``dalab train`` runs);
    ``TensorBoardLogger`` for live curves. ``accuracy_of``, ``predict_logits``,
    ``extract_features`` evaluate a model on tensors; ``load_model`` reads a ``model.pt``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.9.0"

# public name -> (module, attribute); imported on first access (PEP 562)
_EXPORTS: dict[str, tuple[str, str]] = {
    # errors
    "DalabError": ("dalab.errors", "DalabError"),
    "DataError": ("dalab.errors", "DataError"),
    "CheckpointError": ("dalab.errors", "CheckpointError"),
    "TrainingFailure": ("dalab.errors", "TrainingFailure"),
    # data
    "load_domain": ("dalab.data", "load_domain"),
    "Domain": ("dalab.data", "Domain"),
    "Split": ("dalab.data", "Split"),
    "DomainSpec": ("dalab.data", "DomainSpec"),
    "register_domain": ("dalab.data", "register"),
    "DOMAINS": ("dalab.data", "REGISTRY"),
    "data_dir": ("dalab.data", "data_dir"),
    # GRL
    "GradReverseFn": ("dalab.models.grl", "GradReverseFn"),
    "grad_reverse": ("dalab.models.grl", "grad_reverse"),
    "GradientReversal": ("dalab.models.grl", "GradientReversal"),
    "LambdaSchedule": ("dalab.models.grl", "LambdaSchedule"),
    "ganin_lambda": ("dalab.models.grl", "ganin_lambda"),
    # network
    "DANNNet": ("dalab.models.nets", "DANNNet"),
    "FeatureExtractor": ("dalab.models.nets", "FeatureExtractor"),
    "LabelHead": ("dalab.models.nets", "LabelHead"),
    "DomainHead": ("dalab.models.nets", "DomainHead"),
    "build_model": ("dalab.models.registry", "build_model"),
    "SegNet": ("dalab.models.segnet", "SegNet"),
    "SegmentationNet": ("dalab.models.segnet", "SegmentationNet"),
    # tasks: losses and scores of classification and segmentation
    "task_loss": ("dalab.tasks", "task_loss"),
    "evaluate_model": ("dalab.tasks", "evaluate_model"),
    "confusion_matrix": ("dalab.tasks", "confusion_matrix"),
    "scores_from_confusion": ("dalab.tasks", "scores_from_confusion"),
    # inference / evaluation helpers
    "predict_logits": ("dalab.models.inference", "predict_logits"),
    "extract_features": ("dalab.models.inference", "extract_features"),
    "accuracy_of": ("dalab.models.inference", "accuracy_of"),
    # methods (every registered one is also reachable through METHODS / make_method)
    "Method": ("dalab.methods", "Method"),
    "Batch": ("dalab.methods", "Batch"),
    "METHODS": ("dalab.methods", "METHODS"),
    "make_method": ("dalab.methods", "make_method"),
    "domain_adversarial_loss": ("dalab.methods", "domain_adversarial_loss"),
    "SourceOnly": ("dalab.methods", "SourceOnly"),
    "DANN": ("dalab.methods", "DANN"),
    "NoGRL": ("dalab.methods", "NoGRL"),
    "TargetOnly": ("dalab.methods", "TargetOnly"),
    "CDAN": ("dalab.methods", "CDAN"),
    "CDANE": ("dalab.methods", "CDANE"),
    "VADA": ("dalab.methods", "VADA"),
    "DIRTT": ("dalab.methods", "DIRTT"),
    "MeanTeacher": ("dalab.methods", "MeanTeacher"),
    "FixMatch": ("dalab.methods", "FixMatch"),
    "AdaMatch": ("dalab.methods", "AdaMatch"),
    "MCC": ("dalab.methods", "MCC"),
    "PseudoLabel": ("dalab.methods", "PseudoLabel"),
    "DANNPseudoLabel": ("dalab.methods", "DANNPseudoLabel"),
    # training
    "TrainConfig": ("dalab.training", "TrainConfig"),
    "Trainer": ("dalab.training", "Trainer"),
    "train": ("dalab.training", "train"),
    "ganin_lr": ("dalab.training", "ganin_lr"),
    "load_model": ("dalab.training", "load_model"),
    "save_model": ("dalab.training", "save_model"),
    "fit": ("dalab.training.in_memory", "fit"),
    "FitResult": ("dalab.training.in_memory", "FitResult"),
    "TensorData": ("dalab.training.in_memory", "TensorData"),
    "TensorBoardLogger": ("dalab.training.tensorboard", "TensorBoardLogger"),
}

# Methods added to ``dalab.methods.__all__`` later are found there too (see __getattr__).
_FALLBACK_MODULES = ("dalab.methods",)

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # cache: the next access is a plain attribute
        return value
    if not name.startswith("_"):
        for module in _FALLBACK_MODULES:
            mod = importlib.import_module(module)
            if name in getattr(mod, "__all__", ()):
                value = getattr(mod, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module 'dalab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # let type checkers and IDEs see the lazy names
    from .data import REGISTRY as DOMAINS  # noqa: F401
    from .data import Domain, DomainSpec, Split, data_dir, load_domain  # noqa: F401
    from .data import register as register_domain  # noqa: F401
    from .errors import CheckpointError, DalabError, DataError, TrainingFailure  # noqa: F401
    from .methods import (CDAN, CDANE, DANN, DIRTT, MCC, METHODS, VADA, Batch, DANNPseudoLabel,  # noqa: F401
                          AdaMatch, FixMatch, MeanTeacher, Method, NoGRL, PseudoLabel, SourceOnly, TargetOnly,
                          domain_adversarial_loss, make_method)
    from .models.grl import (GradientReversal, GradReverseFn, LambdaSchedule, ganin_lambda,  # noqa: F401
                             grad_reverse)
    from .models.inference import accuracy_of, extract_features, predict_logits  # noqa: F401
    from .models.nets import DANNNet, DomainHead, FeatureExtractor, LabelHead  # noqa: F401
    from .models.registry import build_model  # noqa: F401
    from .models.segnet import SegmentationNet, SegNet  # noqa: F401
    from .tasks import confusion_matrix, evaluate_model, scores_from_confusion, task_loss  # noqa: F401
    from .training import (TrainConfig, Trainer, ganin_lr, load_model, save_model,  # noqa: F401
                           train)
    from .training.in_memory import FitResult, TensorData, fit  # noqa: F401
    from .training.tensorboard import TensorBoardLogger  # noqa: F401
