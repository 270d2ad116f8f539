r"""Loss pieces shared by the methods beyond DANN (entropy, KL, virtual adversarial training).

All functions take class *logits* (B, C) and return differentiable scalars (or (B,) vectors
where said); none uses a label.

- :func:`entropy`: :math:`H(p_i) = -\sum_c p_{ic} \log p_{ic}` per sample, (B,).
- :func:`kl_logits`: :math:`\mathrm{KL}(p \,\|\, q)` per sample, (B,), for ``p = softmax(a)``,
  ``q = softmax(b)``.
- :func:`vat_loss`: virtual adversarial training (Miyato et al., TPAMI 2018):
  :math:`\max_{\|r\|_2 \le \epsilon} \mathrm{KL}(p(x) \,\|\, p(x + r))`, with ``r`` from one
  power-iteration step, :math:`r = \epsilon\, g / \|g\|`, :math:`g = \nabla_d \mathrm{KL}(p(x)
  \,\|\, p(x + \xi d))` at a random unit ``d`` (:math:`\xi = 10^{-3}`). The clean prediction is
  held fixed (detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.nets import to_unit_float


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy (nats) of ``softmax(logits)``; shape (B,)."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def kl_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(softmax(p_logits) || softmax(q_logits))``; shape (B,)."""
    logp = F.log_softmax(p_logits.float(), dim=1)
    logq = F.log_softmax(q_logits.float(), dim=1)
    return (logp.exp() * (logp - logq)).sum(1)


def _unit(d: torch.Tensor) -> torch.Tensor:
    flat = d.flatten(1)
    return (flat / (flat.norm(dim=1, keepdim=True) + 1e-12)).view_as(d)


def vat_loss(model, x: torch.Tensor, clean_logits: torch.Tensor, eps: float = 1.0, xi: float = 1e-3,
             iterations: int = 1) -> torch.Tensor:
    """Mean VAT loss of ``model`` (images -> logits) at ``x`` (B,3,H,W), uint8 or [0,1] floats.

    ``eps`` is the L2 radius of the perturbation in [0, 1] pixel units (per image, over all
    3*H*W values). Gradients reach the model only through the final perturbed pass.
    """
    x = to_unit_float(x).detach()
    d = _unit(torch.randn_like(x))
    # The power iteration probes a perturbation of size xi (1e-3: 1e-6 as in the paper is
    # below fp32 resolution for [0, 1] pixels, let alone bf16), so it always runs in fp32
    # (its own clean pass included).
    with torch.autocast(x.device.type, enabled=False):
        with torch.no_grad():
            p0 = model(x).float()
        for _ in range(iterations):
            d.requires_grad_(True)
            dist = kl_logits(p0, model(x + xi * d)).mean()
            (g,) = torch.autograd.grad(dist, d)
            d = _unit(g.detach())
    return kl_logits(clean_logits.detach(), model(x + eps * d)).mean()
