"""Ganin's MNIST network, split into its three parts (JMLR 2016, Fig. 4 / Sec. 5.1).

- :class:`FeatureExtractor` ("green"): conv(3->32, 5x5)-ReLU-maxpool(2) -> conv(32->48, 5x5)
  -ReLU-maxpool(2) -> flatten to 48*4*4 = 768 features for 28x28 inputs.
- :class:`LabelHead` ("blue"): FC 768->100 -> ReLU -> FC 100->100 -> ReLU -> FC 100->10.
- :class:`DomainHead` ("pink"): FC 768->100 -> ReLU -> FC 100->1 (a logit; source=1, target=0).

``arch="conv9"`` swaps in the larger digit network of Shu et al. 2018, cut where their code
cuts it: :class:`Conv9FeatureExtractor` (two conv blocks, 64*7*7 features, the domain
classifier's input) and :class:`Conv9Head` (the third block, pooling and a linear layer).

The model takes uint8 images (N, 3, 28, 28) or floats in [0, 1] and normalises them the
same way for every domain: ``(x - 0.5) / 0.5``, or, with ``input_norm="instance"``, each
image and channel to zero mean and unit variance. Grey images are repeated to 3 channels
by the data layer. Any ``nn.Module`` that maps images to a flat feature vector can
replace the feature extractor (see :class:`DANNNet`).
"""

from __future__ import annotations

import torch
from torch import nn

from .batchnorm import DomainBatchNorm2d
from .grl import GradientReversal


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float input is passed through."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x


INPUT_NORMS = ("none", "instance")
ARCHS = ("ganin", "conv9", "segnet")  # segnet: the segmentation network (models/segnet.py)


def instance_normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel: ``(x - mean_HW) / sqrt(var_HW + eps)`` (Shu et al. 2018 use this on
    digits: it removes most of MNIST-M's colour/contrast shift before the first conv)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def _checked_input_norm(input_norm: str) -> str:
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"unknown input_norm {input_norm!r} ({', '.join(INPUT_NORMS)})")
    return input_norm


def _batch_norm_layer(batch_norm: bool, domain_bn: bool):
    """The layer that follows each conv: ``channels -> module``."""
    if not batch_norm:
        return lambda c: nn.Identity()
    if domain_bn:  # running statistics per domain (see models/batchnorm.py)
        return DomainBatchNorm2d
    return nn.BatchNorm2d  # checkpoints written before dalab 0.2 hold one shared set of statistics


class FeatureExtractor(nn.Module):
    r"""Ganin's green part :math:`F`: (N, 3, 28, 28) images -> (N, 768) features ``out_features``.

    conv 5x5 (3->32) - ReLU - maxpool 2 - conv 5x5 (32->48) - ReLU - maxpool 2 - flatten,
    after the input normalisation described in the module docstring. With ``batch_norm`` a
    batch norm follows each conv, with one set of running statistics per domain
    (:class:`~dalab.models.batchnorm.DomainBatchNorm2d`) unless ``domain_bn=False``.
    """

    def __init__(self, in_channels: int = 3, batch_norm: bool = False, input_norm: str = "none",
                 domain_bn: bool = True):
        super().__init__()
        self.input_norm = _checked_input_norm(input_norm)
        bn = _batch_norm_layer(batch_norm, domain_bn)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), bn(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), bn(48), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.out_features = 48 * 4 * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x)
        if self.input_norm == "instance":
            x = instance_normalize(x)
        else:
            x = (x - 0.5) / 0.5
        return self.net(x)


class GaussianNoise(nn.Module):
    """Adds ``std`` times standard normal noise in training mode; the identity in evaluation."""

    def __init__(self, std: float = 1.0):
        super().__init__()
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return x + self.std * torch.randn_like(x)
        return x


def _conv9_block(cin: int, width: int, bn) -> list[nn.Module]:
    """Three 3x3 convolutions ('same' padding), each followed by batch norm and leaky ReLU (0.1)."""
    layers: list[nn.Module] = []
    for c in (cin, width, width):
        layers += [nn.Conv2d(c, width, 3, padding=1), bn(width), nn.LeakyReLU(0.1, inplace=True)]
    return layers


class Conv9FeatureExtractor(nn.Module):
    r"""The first two blocks of Shu et al.'s digit network (ICLR 2018, VADA / DIRT-T), ``--arch conv9``:
    (N, 3, 28, 28) images -> (N, 64*7*7 = 3136) features.

    Each block is three 3x3 convolutions with 64 channels ('same' padding), each followed by
    batch norm and leaky ReLU (slope 0.1), then 2x2 max-pool, dropout 0.5 and Gaussian noise
    (std 1) in training. The network is cut here, as in Shu et al.'s code (``trim=5``): the
    domain classifier sees these intermediate features, and the third block is part of the
    label head (:class:`Conv9Head`). Input normalisation as in :class:`FeatureExtractor`.
    The whole network does about 22 times the multiply-adds of Ganin's (0.17 against 0.008 GFLOP
    per 28x28 image forward): it is meant for a GPU.
    """

    def __init__(self, in_channels: int = 3, batch_norm: bool = True, input_norm: str = "instance",
                 domain_bn: bool = True, width: int = 64, dropout: float = 0.5, noise: float = 1.0):
        super().__init__()
        self.input_norm = _checked_input_norm(input_norm)
        bn = _batch_norm_layer(batch_norm, domain_bn)
        self.net = nn.Sequential(
            *_conv9_block(in_channels, width, bn), nn.MaxPool2d(2), nn.Dropout(dropout), GaussianNoise(noise),
            *_conv9_block(width, width, bn), nn.MaxPool2d(2), nn.Dropout(dropout), GaussianNoise(noise),
            nn.Flatten(),
        )
        self.width = width
        self.out_features = width * 7 * 7

    forward = FeatureExtractor.forward


class Conv9Head(nn.Module):
    r"""The label head of ``--arch conv9``: features (N, 64*7*7) -> class logits (N, K).

    Shu et al.'s third block (three 3x3 convolutions, batch norm, leaky ReLU 0.1), global
    average pooling and one linear layer. Its batch norm follows the same per-domain rule as
    the extractor's, so methods classify source and target features each with their own batch
    statistics (:func:`dalab.methods.dann.classify_per_domain`).
    """

    def __init__(self, width: int = 64, num_classes: int = 10, batch_norm: bool = True, domain_bn: bool = True):
        super().__init__()
        bn = _batch_norm_layer(batch_norm, domain_bn)
        self.net = nn.Sequential(
            nn.Unflatten(1, (width, 7, 7)), *_conv9_block(width, width, bn),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class LabelHead(nn.Module):
    r"""Ganin's blue part :math:`C`: features (N, D) -> class logits (N, K) (FC-ReLU-FC-ReLU-FC, 100 hidden)."""

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
    r"""Ganin's pink part :math:`D`: features (N, D) -> one domain logit (N,) (source 1, target 0).

    Put behind a GRL (:meth:`DANNNet.domain_logits`) it is the adversary of the features.
    """

    def __init__(self, in_features: int = 768, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)


class ThreeParts(nn.Module):
    """What DANN's networks share, for classification and segmentation alike: ``label_head``,
    ``grl`` and ``domain_head`` modules, with :meth:`classify` and :meth:`domain_logits` over them."""

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        return self.label_head(f)

    def domain_logits(self, f: torch.Tensor, lambd: float | None = None) -> torch.Tensor:
        """Domain logits of features ``f`` through the GRL, whose strength becomes ``lambd`` if given."""
        if lambd is not None:
            self.grl.lambd = float(lambd)
        return self.domain_head(self.grl(f))


class DANNNet(ThreeParts):
    """Features + label head + (GRL -> domain head).

    ``forward(x)`` returns class logits; :meth:`features`, :meth:`classify` and
    :meth:`domain_logits` expose the parts so a method can run the extractor once on
    a concatenated source+target batch.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False,
                 feature_extractor: nn.Module | None = None, feature_dim: int | None = None,
                 input_norm: str = "none", domain_bn: bool = True, arch: str = "ganin"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r} ({', '.join(ARCHS)})")
        if arch == "segnet":
            raise ValueError("arch 'segnet' is a segmentation network: build it with dalab.models.segnet.SegNet")
        if feature_extractor is None:
            extractor = Conv9FeatureExtractor if arch == "conv9" else FeatureExtractor
            feature_extractor = extractor(batch_norm=batch_norm, input_norm=input_norm, domain_bn=domain_bn)
        self.features_net = feature_extractor
        dim = feature_dim or getattr(self.features_net, "out_features", None)
        if dim is None:
            raise ValueError("pass feature_dim for a custom feature extractor")
        if arch == "conv9" and isinstance(self.features_net, Conv9FeatureExtractor):
            self.label_head = Conv9Head(self.features_net.width, num_classes, batch_norm, domain_bn)
        else:
            self.label_head = LabelHead(dim, num_classes)
        self.feature_dim, self.num_classes = int(dim), int(num_classes)
        self.grl = GradientReversal(1.0)
        self.domain_head = DomainHead(dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


# the "arch" name each network has in checkpoints; dalab <= 0.2 wrote "ganin-mnist" (or nothing)
CHECKPOINT_ARCH = {"ganin": "ganin-mnist", "conv9": "conv9-shu", "segnet": "segnet-dalab"}
ARCH_OF_CHECKPOINT = {v: k for k, v in CHECKPOINT_ARCH.items()}
# dalab 0.3.0 cut conv9 after its pooling layer (64 features): those weights do not fit this layout
RETIRED_ARCHS = {"conv9": "a conv9 network of dalab 0.3.0 (cut after pooling, not after the second block); "
                          "retrain it with this version"}


def build_model(config: dict) -> nn.Module:
    """Rebuild a model from the plain config stored in checkpoints."""
    name = str(config.get("arch", "ganin-mnist"))
    if name == "photonet":  # a torchvision or timm backbone with the fine-tuning head (models/backbones.py)
        from .backbones import PhotoNet

        return PhotoNet.from_config(config)
    if name in RETIRED_ARCHS:
        raise ValueError(RETIRED_ARCHS[name])
    arch = ARCH_OF_CHECKPOINT.get(name)
    if arch is None:
        raise ValueError(f"unknown network {config.get('arch')!r}")
    if arch == "segnet":
        from .segnet import SegNet

        return SegNet(num_classes=int(config.get("num_classes", 19)), width=int(config.get("width", 24)),
                      batch_norm=bool(config.get("batch_norm", True)), domain_bn=bool(config.get("domain_bn", True)),
                      input_norm=str(config.get("input_norm", "instance")))
    return DANNNet(num_classes=int(config.get("num_classes", 10)),
                   batch_norm=bool(config.get("batch_norm", False)),
                   input_norm=str(config.get("input_norm", "none")),
                   domain_bn=bool(config.get("domain_bn", False)), arch=arch)
