"""Adaptation methods behind one interface (:class:`Method`), looked up by name."""

from __future__ import annotations

from ..errors import DalabError
from .base import Batch, Method, accuracy
from .basic import SourceOnly, TargetOnly
from .dann import DANN, NoGRL, domain_adversarial_loss
from .cdan import CDAN, CDANE
from .consistency import AdaMatch, FixMatch, MeanTeacher
from .mcc import MCC
from .vada import DIRTT, VADA
from .pseudo_label import DANNPseudoLabel, PseudoLabel
from .adaptseg import AdaptSeg
from .advent import AdvEnt, MinEnt
from .cbst import CBST
from .dacs import DACS
from .daformer import DAFormer
from .fda import FDA
from .mic import MIC

METHODS: dict[str, type[Method]] = {m.name: m for m in (SourceOnly, DANN, NoGRL, TargetOnly)}
METHODS.update({m.name: m for m in (CDAN, CDANE, VADA, DIRTT, MeanTeacher, FixMatch, AdaMatch, MCC)})
METHODS.update({m.name: m for m in (PseudoLabel, DANNPseudoLabel)})
# semantic segmentation (tasks = ("segmentation",))
METHODS.update({m.name: m for m in (AdvEnt, MinEnt, AdaptSeg, FDA, CBST, DACS, MIC, DAFormer)})


def uses_target_labels(name: str | None) -> bool:
    """Whether the method called ``name`` trains on target labels (the oracle); False for an unknown name."""
    return getattr(METHODS.get(name), "uses_target_labels", False)


def check_method_args(name: str, args: dict | None) -> None:
    """Explicit method hyper-parameters (``--method-arg``) must be ones the method takes."""
    import inspect

    if not args or name not in METHODS:
        return
    params = [k for k in inspect.signature(METHODS[name].__init__).parameters if k != "self"]
    bad = [k for k in args if k not in params]
    if bad:
        raise DalabError(f"method {name!r} takes no {', '.join(bad)} (its hyper-parameters: "
                         f"{', '.join(params) or 'none'})")
    try:
        METHODS[name](**args)
    except (TypeError, ValueError) as e:
        raise DalabError(f"method {name!r}: bad hyper-parameter value ({e})") from None


def make_method(name: str, **kwargs) -> Method:
    """Build a method by name; keyword arguments a method does not take are ignored."""
    import inspect

    if name not in METHODS:
        raise DalabError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in params and v is not None})


__all__ = ["Batch", "Method", "accuracy", "SourceOnly", "TargetOnly", "DANN", "NoGRL",
           "domain_adversarial_loss", "METHODS", "make_method", "check_method_args",
           "CDAN", "CDANE", "VADA", "DIRTT", "MeanTeacher", "FixMatch", "AdaMatch", "MCC",
           "PseudoLabel", "DANNPseudoLabel", "AdvEnt", "MinEnt", "AdaptSeg", "FDA", "CBST", "DACS", "MIC", "DAFormer"]
