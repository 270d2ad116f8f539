"""Adaptation methods behind one interface (:class:`Method`), looked up by name."""

from __future__ import annotations

from ..errors import DalabError
from .base import Batch, Method, accuracy
from .basic import SourceOnly, TargetOnly
from .dann import DANN, NoGRL, domain_adversarial_loss

METHODS: dict[str, type[Method]] = {m.name: m for m in (SourceOnly, DANN, NoGRL, TargetOnly)}


def make_method(name: str, **kwargs) -> Method:
    """Build a method by name; keyword arguments a method does not take are ignored."""
    import inspect

    if name not in METHODS:
        raise DalabError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in params and v is not None})


__all__ = ["Batch", "Method", "accuracy", "SourceOnly", "TargetOnly", "DANN", "NoGRL",
           "domain_adversarial_loss", "METHODS", "make_method"]
