"""dalab's networks by name: build one for a run (:func:`build_network`) or rebuild one from the
plain config a checkpoint stores (:func:`build_model`).

Names: ``ganin`` (Ganin's MNIST network), ``conv9`` (Shu et al.'s digit network), ``segnet``
(dalab's segmentation network). Checkpoints store each under its checkpoint name
(:data:`CHECKPOINT_ARCH`); dalab <= 0.2 wrote ``ganin-mnist`` or nothing.
"""

from __future__ import annotations

from torch import nn

from .nets import ARCHS, DANNNet
from .segnet import SegNet

# the "arch" name each network has in checkpoints; dalab <= 0.2 wrote "ganin-mnist" (or nothing)
CHECKPOINT_ARCH = {"ganin": "ganin-mnist", "conv9": "conv9-shu", "segnet": "segnet-dalab"}
ARCH_OF_CHECKPOINT = {v: k for k, v in CHECKPOINT_ARCH.items()}
# dalab 0.3.0 cut conv9 after its pooling layer (64 features): those weights do not fit this layout
RETIRED_ARCHS = {"conv9": "a conv9 network of dalab 0.3.0 (cut after pooling, not after the second block); "
                          "retrain it with this version"}


def build_network(arch: str, num_classes: int, batch_norm: bool = True, input_norm: str = "instance",
                  domain_bn: bool = True, width: int | None = None) -> nn.Module:
    """A fresh dalab network ``arch`` (one of :data:`~dalab.models.nets.ARCHS`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} ({', '.join(ARCHS)})")
    if arch == "segnet":
        return SegNet(num_classes=num_classes, batch_norm=batch_norm, input_norm=input_norm, domain_bn=domain_bn,
                      **({"width": width} if width is not None else {}))
    return DANNNet(num_classes=num_classes, batch_norm=batch_norm, input_norm=input_norm, domain_bn=domain_bn,
                   arch=arch)


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
    seg = arch == "segnet"  # checkpoints of dalab < 0.9 left out the settings that had these defaults
    return build_network(arch, num_classes=int(config.get("num_classes", 19 if seg else 10)),
                         batch_norm=bool(config.get("batch_norm", seg)),
                         input_norm=str(config.get("input_norm", "instance" if seg else "none")),
                         domain_bn=bool(config.get("domain_bn", seg)),
                         width=int(config["width"]) if seg and "width" in config else None)
