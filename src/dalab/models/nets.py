"""Ganin's MNIST network, split into its three parts (JMLR 2016, Fig. 4 / Sec. 5.1).

- :class:`FeatureExtractor` ("green"): conv(3->32, 5x5)-ReLU-maxpool(2) -> conv(32->48, 5x5)
  -ReLU-maxpool(2) -> flatten to 48*4*4 = 768 features for 28x28 inputs.
- :class:`LabelHead` ("blue"): FC 768->100 -> ReLU -> FC 100->100 -> ReLU -> FC 100->10.
- :class:`DomainHead` ("pink"): FC 768->100 -> ReLU -> FC 100->1 (a logit; source=1, target=0).

The model takes uint8 images (N, 3, 28, 28) or floats in [0, 1] and normalises them the
same way for every domain: ``(x - 0.5) / 0.5``. Grey images are repeated to 3 channels
by the data layer. Any ``nn.Module`` that maps images to a flat feature vector can
replace the feature extractor (see :class:`DANNNet`).
"""

from __future__ import annotations

import torch
from torch import nn

from .grl import GradientReversal


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float input is passed through."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x


class FeatureExtractor(nn.Module):
    def __init__(self, in_channels: int = 3, batch_norm: bool = False):
        super().__init__()
        bn = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), bn(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), bn(48), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.out_features = 48 * 4 * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (to_unit_float(x) - 0.5) / 0.5
        return self.net(x)


class LabelHead(nn.Module):
    def __init__(self, in_features: int = 768, num_classes: int = 10, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class DomainHead(nn.Module):
    def __init__(self, in_features: int = 768, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)


class DANNNet(nn.Module):
    """Features + label head + (GRL -> domain head).

    ``forward(x)`` returns class logits; :meth:`features`, :meth:`classify` and
    :meth:`domain_logits` expose the parts so a method can run the extractor once on
    a concatenated source+target batch.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False,
                 feature_extractor: nn.Module | None = None, feature_dim: int | None = None):
        super().__init__()
        self.features_net = feature_extractor or FeatureExtractor(batch_norm=batch_norm)
        dim = feature_dim or getattr(self.features_net, "out_features", None)
        if dim is None:
            raise ValueError("pass feature_dim for a custom feature extractor")
        self.label_head = LabelHead(dim, num_classes)
        self.grl = GradientReversal(1.0)
        self.domain_head = DomainHead(dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_net(x)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        return self.label_head(f)

    def domain_logits(self, f: torch.Tensor, lambd: float | None = None) -> torch.Tensor:
        if lambd is not None:
            self.grl.lambd = float(lambd)
        return self.domain_head(self.grl(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def build_model(config: dict) -> DANNNet:
    """Rebuild a model from the plain config stored in checkpoints."""
    return DANNNet(num_classes=int(config.get("num_classes", 10)),
                   batch_norm=bool(config.get("batch_norm", False)))
