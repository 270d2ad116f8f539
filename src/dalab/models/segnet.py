r"""Segmentation networks in DANN's three parts: features, a pixel classifier, a domain head.

:class:`SegNet` is dalab's small default for the offline street scenes (48x96): it trains on
two CPU cores in minutes.

- features (stride 4): conv3x3(3->w, s2)-BN-ReLU -> conv3x3(w->2w, s2)-BN-ReLU -> three
  conv3x3(2w->2w) with dilation 1, 2, 4, each BN-ReLU. (B, 3, H, W) -> (B, 2w, H/4, W/4),
  a receptive field of 63 pixels (71 with the classifier's 3x3 convolution). Batch norm keeps one set of statistics per domain
  (:class:`~dalab.models.batchnorm.DomainBatchNorm2d`), as in dalab's digit network.
- pixel classifier: conv3x3(2w->2w)-ReLU -> conv1x1(2w->K): logits (B, K, H/4, W/4).
- domain head, for DANN on pixels: GRL -> conv1x1(2w->w)-ReLU -> conv1x1(w->1): one domain
  logit per feature-map location, (B, 1, H/4, W/4).

``forward(x)`` returns logits upsampled bilinearly to the input's (H, W), so ``model(x)`` is a
dense prediction for any method; :meth:`classify` stays at feature resolution and the loss
(:func:`dalab.tasks.task_loss`) upsamples to the label size.

:class:`SegmentationNet` wraps any backbone that maps images to a feature map (a user's own, or
e.g. torchvision's DeepLab backbone where torchvision is installed; see docs/segmentation.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .grl import GradientReversal
from .nets import ThreeParts, _batch_norm_layer, _checked_input_norm, instance_normalize, to_unit_float


class SegmentationNet(ThreeParts):
    """Feature map + pixel classifier + (GRL -> pixel domain head), for any ``feature_extractor``.

    ``feature_extractor`` maps (B, 3, H, W) images (float in [0, 1] or uint8, which is scaled)
    to (B, feature_dim, h, w). ``num_classes`` logits per pixel.
    """

    def __init__(self, feature_extractor: nn.Module, feature_dim: int, num_classes: int = 19,
                 input_norm: str = "none"):
        super().__init__()
        self.features_net = feature_extractor
        self.feature_dim, self.num_classes = int(feature_dim), int(num_classes)
        self.input_norm = _checked_input_norm(input_norm)
        c = self.feature_dim
        self.label_head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(c, num_classes, 1))
        self.grl = GradientReversal(1.0)
        self.domain_head = nn.Sequential(nn.Conv2d(c, max(c // 2, 1), 1), nn.ReLU(inplace=True),
                                         nn.Conv2d(max(c // 2, 1), 1, 1))

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x)
        if self.input_norm == "instance":
            return instance_normalize(x)
        return (x - 0.5) / 0.5

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_net(self.prepare_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classify(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segnet_backbone(width: int = 24, batch_norm: bool = True, domain_bn: bool = True) -> nn.Sequential:
    """SegNet's feature extractor (see the module docstring): stride 4, ``2 * width`` channels."""
    norm = _batch_norm_layer(batch_norm, domain_bn)
    w2 = 2 * width
    layers: list[nn.Module] = []
    for cin, cout, stride, dil in ((3, width, 2, 1), (width, w2, 2, 1), (w2, w2, 1, 1), (w2, w2, 1, 2),
                                   (w2, w2, 1, 4)):
        layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=dil, dilation=dil, bias=not batch_norm),
                   norm(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SegNet(SegmentationNet):
    """dalab's default segmentation network (see the module docstring)."""

    def __init__(self, num_classes: int = 19, width: int = 24, batch_norm: bool = True,
                 domain_bn: bool = True, input_norm: str = "instance"):
        super().__init__(segnet_backbone(width, batch_norm, domain_bn), 2 * width, num_classes, input_norm)
        self.width = int(width)
