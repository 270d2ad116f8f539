r"""Batch norm with one set of running statistics per domain (AdaBN, Li et al. 2016).

In training, batch norm normalises each batch with its own statistics; DANN normalises source
and target batches separately, so the network learns with *domain-specific* statistics.
A plain ``BatchNorm2d`` then averages both domains into one set of running statistics, and at
evaluation time every domain is normalised with that mixture, which belongs to neither. On
MNIST -> MNIST-M this cost DANN about 4 points of target accuracy.

:class:`DomainBatchNorm2d` keeps the affine parameters :math:`\gamma, \beta` shared and holds
one row of running statistics per domain (row 0 = source, row 1 = target):

.. math::

    \mathrm{BN}_d(x) = \gamma \, \frac{x - \mu_d}{\sqrt{\sigma_d^2 + \epsilon}} + \beta

The row in use is the module's ``domain`` attribute (set it for a whole network with
:func:`set_bn_domain` / :func:`bn_domain`). :func:`calibrate_bn` recomputes a row exactly from
unlabelled images of that domain with the current weights (AdaBN); the trainer does this for
source and target training images before every evaluation, so no label is involved. Ordinary
``nn.BatchNorm*`` layers (a user's backbone) keep their running statistics unless the caller
asks for them too (``layers="all"``). A row that was never filled falls back to row 0, so a
model trained on one domain evaluates any domain with that domain's statistics.

One pass for both domains: with ``split = n`` (set for a whole network with :func:`bn_split`),
a :class:`DomainBatchNorm2d` normalises rows ``[:n]`` of its input with source statistics and
rows ``[n:]`` with target statistics, updating each domain's running statistics, so the
convolutions and linear layers run once over the concatenated source + target batch instead
of once per domain. Every other layer treats rows independently, so this is the two-pass
computation in one pass (the same maths, up to float rounding).

Running statistics are buffers: they travel with ``state_dict()``, checkpoints and DDP.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

DOMAINS = {"source": 0, "target": 1}


def domain_index(domain: int | str) -> int:
    if isinstance(domain, str):
        if domain not in DOMAINS:
            raise ValueError(f"unknown batch-norm domain {domain!r} ({', '.join(DOMAINS)})")
        return DOMAINS[domain]
    return int(domain)


class DomainBatchNorm2d(nn.Module):
    """``BatchNorm2d`` over (N, C, H, W) with shared affine and ``num_domains`` rows of running stats.

    ``momentum=None`` gives a cumulative average (used by :func:`calibrate_bn`), as in PyTorch.
    """

    def __init__(self, num_features: int, num_domains: int = 2, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.num_features, self.num_domains = int(num_features), int(num_domains)
        self.eps, self.momentum = float(eps), momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_domains, num_features))
        self.register_buffer("running_var", torch.ones(num_domains, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_domains, dtype=torch.long))
        self.domain = 0
        self.split: int | None = None  # rows [:split] source, [split:] target (see bn_split)

    def reset_domain(self, d: int) -> None:
        self.running_mean[d].zero_()
        self.running_var[d].fill_(1.0)
        self.num_batches_tracked[d].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.split
        if n is not None:
            if 0 < n < len(x):  # both domains in one batch: each part with its own statistics
                return torch.cat([self._norm(x[:n], 0), self._norm(x[n:], 1)])
            return self._norm(x, 0 if n >= len(x) else 1)
        return self._norm(x, self.domain)

    def _norm(self, x: torch.Tensor, d: int) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked[d] += 1
            factor = self.momentum
            if factor is None:
                factor = 1.0 / float(self.num_batches_tracked[d])
            return F.batch_norm(x, self.running_mean[d], self.running_var[d], self.weight, self.bias,
                                True, factor, self.eps)
        if d and not bool(self.num_batches_tracked[d]):
            d = 0  # this domain's statistics were never computed: use the first domain's
        return F.batch_norm(x, self.running_mean[d], self.running_var[d], self.weight, self.bias,
                            False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_domains={self.num_domains}, eps={self.eps}, momentum={self.momentum}"


def splits_domains(model: nn.Module) -> bool:
    """Whether one pass of ``model`` over a concatenated source + target batch can give each domain
    its own batch statistics: it has batch norm, and all of it is :class:`DomainBatchNorm2d`
    (a plain ``BatchNorm2d`` would mix the domains, so such a network keeps one pass per domain)."""
    found = False
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return False
        found = found or isinstance(m, DomainBatchNorm2d)
    return found


@contextlib.contextmanager
def bn_split(model: nn.Module, n_source: int):
    """Inside the block, every :class:`DomainBatchNorm2d` of ``model`` treats the first ``n_source``
    rows of its input as source and the rest as target (each normalised with, and updating, its
    own domain's statistics)."""
    mods = domain_bns(model)
    old = [m.split for m in mods]
    for m in mods:
        m.split = int(n_source)
    try:
        yield
    finally:
        for m, o in zip(mods, old):
            m.split = o


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has any batch norm, plain or per domain."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, DomainBatchNorm2d)) for m in model.modules())


def domain_bns(model: nn.Module) -> list[DomainBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, DomainBatchNorm2d)]


def set_bn_domain(model: nn.Module, domain: int | str) -> None:
    d = domain_index(domain)
    for m in domain_bns(model):
        m.domain = d


@contextlib.contextmanager
def bn_domain(model: nn.Module, domain: int | str | None):
    """Use ``domain``'s statistics inside the block (``None``: leave the model as it is)."""
    mods = domain_bns(model) if domain is not None else []
    old = [m.domain for m in mods]
    d = domain_index(domain) if domain is not None else 0
    for m in mods:
        m.domain = d
    try:
        yield
    finally:
        for m, o in zip(mods, old):
            m.domain = o


CALIBRATE_LAYERS = ("domain", "all")


def plain_bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every ordinary batch norm of ``model`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) that keeps running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor, domain: int | str, batch_size: int = 1000,
                 autocast=contextlib.nullcontext, layers: str = "domain") -> bool:
    r"""Recompute ``domain``'s running statistics from images ``x`` (no labels) with the current weights.

    Exact cumulative averages of the per-batch statistics, as AdaBN prescribes: after batches
    :math:`B_1..B_K` of the whole network's forward pass, a layer's row ``domain`` holds

    .. math::

        \mu_d = \frac{1}{K} \sum_k \operatorname{mean}(B_k), \qquad
        \sigma_d^2 = \frac{1}{K} \sum_k \operatorname{var}_{\text{unbiased}}(B_k)

    per channel, over every dimension but the channel of each layer's input in batch :math:`B_k`.

    ``layers`` says which batch norm is recomputed:

    - ``"domain"`` (the default): only the ``domain`` row of each :class:`DomainBatchNorm2d`.
      Every ordinary batch norm (``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm``, for example in a
      user's pretrained backbone) runs in evaluation mode with its own running statistics during
      the pass, exactly as it will at evaluation time, and keeps them unchanged.
    - ``"all"``: the ordinary batch norm's single set of running statistics is recomputed from
      ``x`` as well (AdaBN applied to a plain backbone). It then holds ``domain``'s statistics,
      whichever domain is evaluated next.

    Every module's training flag and every :class:`DomainBatchNorm2d`'s ``domain`` and ``momentum``
    are restored afterwards (ordinary batch norm's ``momentum`` too). Returns False (and does
    nothing) when there is nothing to recompute (no :class:`DomainBatchNorm2d`, and for ``"all"``
    no ordinary batch norm either) or ``x`` is empty.
    """
    if layers not in CALIBRATE_LAYERS:
        raise ValueError(f"unknown batch-norm calibration layers {layers!r} ({', '.join(CALIBRATE_LAYERS)})")
    d = domain_index(domain)
    mods = domain_bns(model)
    plain = plain_bns(model)
    recomputed = plain if layers == "all" else []
    if not (mods or recomputed) or len(x) == 0:
        return False
    modes = [(m, m.training) for m in model.modules()]
    saved = [(m.domain, m.momentum) for m in mods]
    saved_plain = [m.momentum for m in recomputed]
    for m in mods:
        m.reset_domain(d)
        m.domain, m.momentum = d, None
    for m in recomputed:
        m.reset_running_stats()
        m.momentum = None  # cumulative average, as for DomainBatchNorm2d
    model.train()
    if layers == "domain":
        for m in plain:
            m.eval()  # normalise with its own running statistics and leave them as they are
    dev = next(model.parameters()).device
    try:
        with autocast():
            for i in range(0, len(x), batch_size):  # the whole network: a label head may have batch norm too
                model(x[i:i + batch_size].to(dev, non_blocking=True))
    finally:
        for m, (dom, mom) in zip(mods, saved):
            m.domain, m.momentum = dom, mom
        for m, mom in zip(recomputed, saved_plain):
            m.momentum = mom
        for m, was in modes:
            m.training = was
    return True
