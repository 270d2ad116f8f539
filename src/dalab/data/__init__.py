"""Data layer: offline domains as uint8 arrays, cached atomically."""

from .domains import REGISTRY, Domain, DomainSpec, Split, load_domain, register
from .mnistm import blend, build_mnistm
from .paths import data_dir

__all__ = ["REGISTRY", "Domain", "DomainSpec", "Split", "load_domain", "register",
           "blend", "build_mnistm", "data_dir"]
