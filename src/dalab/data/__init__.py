"""Data layer: offline domains as uint8 arrays, cached atomically."""

from .domains import REGISTRY, Domain, DomainSpec, Split, load_domain, register
from .mnistm import blend, build_mnistm
from .paths import data_dir

__all__ = ["REGISTRY", "Domain", "DomainSpec", "Split", "StreamSplit", "load_domain", "register",
           "blend", "build_mnistm", "data_dir"]


def __getattr__(name: str):
    if name == "StreamSplit":  # data/seg_real.py imports torch, so it is loaded on first use
        from .seg_real import StreamSplit

        return StreamSplit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
