r"""Pretrained backbones by name (torchvision or timm) and :class:`PhotoNet`, the usual head for
fine-tuning one on photos.

**Names** (:func:`make_backbone`, ``--backbone NAME``): a torchvision model name
(``torchvision.models.list_models()``, e.g. ``resnet50``) or a timm one (``timm.list_models()``,
e.g. ``resnet50.a1_in1k``, ``convnext_tiny``); a name both libraries know is torchvision's unless
written ``timm:NAME`` (``torchvision:NAME`` is also accepted). Both libraries are optional extras,
imported only here and only when asked: ``pip install torchvision`` (the build that matches your
torch, e.g. torch 2.14.1 with torchvision 0.29.1) and ``pip install timm``.

**Weights.** ``pretrained=True`` asks the library for its ImageNet weights, downloaded on your
machine into its cache (torchvision: ``TORCH_HOME``'s ``hub/checkpoints``; timm: the Hugging Face
cache). For torchvision this is ``IMAGENET1K_V1`` where the model has it: the weights of
``pretrained=True`` in older torchvision, which the published domain-adaptation tables (DANN,
CDAN and MCC as TLlib runs them) were made with; a string picks another set by name (e.g.
``"IMAGENET1K_V2"`` or ``"DEFAULT"``). For timm it is the name's pretrained tag. Without network
access the download fails and that is one :class:`~dalab.errors.DalabError` saying what to do.
``init=PATH`` loads your own state dict instead (``torch.load(weights_only=True)``; a
``{"state_dict": ...}`` or ``{"model": ...}`` wrapper, a ``module.`` prefix (DDP) and a
``backbone.`` prefix are taken off; the library's classifier keys are ignored); it must fit
exactly, else one line counts the missing and unexpected keys and the shape mismatches.

**The network** (:class:`PhotoNet`), as TLlib's ``ImageClassifier`` and ``DomainDiscriminator``
(``tllib/modules/classifier.py``, ``tllib/modules/domain_discriminator.py``) and the DANN/CDAN
papers' ResNet-50 setting:

.. math::

    x \xrightarrow{(x/255 - \mu) / \sigma} \text{backbone} \to g \in \mathbb{R}^{D}
      \xrightarrow{\text{Linear}(D, 256) - \text{BN} - \text{ReLU}} f \in \mathbb{R}^{256}
      \xrightarrow{\text{Linear}(256, K)} \text{logits}

with :math:`\mu, \sigma` ImageNet's mean (0.485, 0.456, 0.406) and standard deviation (0.229,
0.224, 0.225) (or the timm model's own), :math:`g` the backbone's globally pooled features
(D = 2048 for ResNet-50, 512 for ResNet-18) and :math:`f` the bottleneck features that
:meth:`PhotoNet.features` returns. The domain discriminator works on :math:`f` behind the GRL:
Linear(256, 1024) - BN - ReLU - Linear(1024, 1024) - BN - ReLU - Linear(1024, 1), one logit
(source 1, target 0). Shapes: images (N, 3, S, S) uint8 or floats in [0, 1] -> ``features``
(N, 256) -> ``classify`` (N, K); ``domain_logits`` (N,).

**Fine-tuning recipe** (TLlib's ``examples/domain_adaptation/image_classification``): SGD with
momentum 0.9 (Nesterov), weight decay 1e-3, learning rate 0.01 decayed as
:math:`\eta_t = \eta_0 (1 + 0.001\, t)^{-0.75}`, and the pretrained backbone at 0.1 times the rate
of the new layers (:meth:`PhotoNet.param_groups`). Batch norm: the backbone's and the head's are
ordinary ``BatchNorm`` layers, and :attr:`PhotoNet.joint_batch_norm` asks methods to pass source
and target through the network in one concatenated batch, as TLlib's scripts do, so the batch
statistics and the running statistics used at evaluation are the same mixture of both domains.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DalabError
from .grl import GradientReversal
from .nets import ThreeParts, to_unit_float

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LIBRARIES = ("torchvision", "timm")
INSTALL = {"torchvision": "pip install torchvision (the build matching your torch, e.g. torch==2.14.1 with "
                          "torchvision==0.29.1)",
           "timm": "pip install timm"}
BOTTLENECK = 256        # TLlib's --bottleneck-dim default
DOMAIN_HIDDEN = 1024    # TLlib's DomainDiscriminator(hidden_size=1024) in its DANN script
BACKBONE_LR = 0.1       # the backbone's learning rate relative to the new layers (TLlib's get_parameters)

__all__ = ["Backbone", "make_backbone", "resolve_name", "load_init", "PhotoNet", "DomainDiscriminator",
           "IMAGENET_MEAN", "IMAGENET_STD", "BOTTLENECK", "DOMAIN_HIDDEN", "BACKBONE_LR"]


def _library(lib: str):
    try:
        if lib == "torchvision":
            import torchvision.models as m
        else:
            import timm as m
    except ImportError:
        raise DalabError(f"this backbone needs {lib}, an optional extra: {INSTALL[lib]}") from None
    return m


def _installed(lib: str) -> bool:
    try:
        _library(lib)
        return True
    except DalabError:
        return False


def _known(lib: str, name: str) -> bool:
    m = _library(lib)
    if lib == "torchvision":
        return name in m.list_models()
    return bool(m.is_model(name))


def resolve_name(name: str) -> tuple[str, str]:
    """``NAME``, ``torchvision:NAME`` or ``timm:NAME`` -> (library, model name); one-line DalabErrors for a
    name neither library knows and for a library that is not installed."""
    name = str(name).strip()
    lib, sep, rest = name.partition(":")
    if sep and lib in LIBRARIES:
        if not rest:
            raise DalabError(f"--backbone {name}: a model name is missing after '{lib}:'")
        if not _known(lib, rest):
            raise DalabError(f"--backbone {name}: {lib} has no model {rest!r}{_suggest(rest, [lib])}")
        return lib, rest
    libs = [lib for lib in LIBRARIES if _installed(lib)]
    if not libs:
        raise DalabError(f"--backbone {name} needs torchvision or timm, optional extras: {INSTALL['torchvision']}, "
                         f"or {INSTALL['timm']}")
    for lib in libs:
        if _known(lib, name):
            return lib, name
    missing = [lib for lib in LIBRARIES if lib not in libs]
    also = f"; {missing[0]} is not installed ({INSTALL[missing[0]]})" if missing else ""
    raise DalabError(f"--backbone {name}: neither {' nor '.join(libs)} knows this model{_suggest(name, libs)}{also}")


def _suggest(name: str, libs: list[str]) -> str:
    names = []
    for lib in libs:
        m = _library(lib)
        names += m.list_models() if lib == "torchvision" else m.list_models(pretrained=False)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


@dataclass
class Backbone:
    """A library model without its classifier: ``module`` maps normalised images (N, 3, H, W) to pooled
    features (N, ``feature_dim``); ``mean`` / ``std`` are the input normalisation it was trained with."""

    module: nn.Module
    feature_dim: int
    library: str
    name: str
    mean: tuple
    std: tuple
    weights: str  # "random", the library's weights, or "init <file>"
    head_keys: tuple  # prefixes of the library classifier's keys (ignored in an init state dict)

    @property
    def spec(self) -> str:
        return f"{self.library}:{self.name}"


class _FirstOutput(nn.Module):
    """Calls ``net`` and keeps its main output (torchvision's Inception/GoogLeNet return a tuple while training)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _download_error(spec: str, lib: str, name: str, e: BaseException) -> DalabError:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    if lib == "torchvision":
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        fetch = f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='IMAGENET1K_V1')\""
    else:
        cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
        fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    return DalabError(f"could not get the pretrained weights of {spec} ({type(e).__name__}: {first}); without "
                      f"network access, run {fetch} on a machine that has it and copy its cache to {cache} here, "
                      "or pass --init PATH with a state dict")


def _drop_torchvision_head(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Replace the last ``nn.Linear`` (torchvision's classifier) with the identity: (model, its input width, its name)."""
    last = None
    for qual, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (qual, mod)
    if last is None:
        raise DalabError(f"{type(model).__name__}: no final linear classifier to take off (a convolutional "
                         "classifier); use a timm model or pass your own module to PhotoNet")
    qual, lin = last
    parent_name, _, child = qual.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return model, int(lin.in_features), qual


def make_backbone(name: str, pretrained: bool | str = False, init: str | os.PathLike | None = None) -> Backbone:
    """``--backbone NAME`` (see the module docstring) -> a :class:`Backbone` with pooled features."""
    if pretrained and init:
        raise DalabError("--pretrained and --init both give the backbone its weights: pass one of them")
    lib, model_name = resolve_name(name)
    spec = f"{lib}:{model_name}"
    m = _library(lib)
    mean, std, weights = IMAGENET_MEAN, IMAGENET_STD, "random"
    if lib == "torchvision":
        w = None
        if pretrained:
            try:
                members = m.get_model_weights(model_name).__members__
            except (ValueError, KeyError, AttributeError):
                raise DalabError(f"{spec}: torchvision has no pretrained weights for this model") from None
            tag = pretrained if isinstance(pretrained, str) else ("IMAGENET1K_V1" if "IMAGENET1K_V1" in members
                                                                  else "DEFAULT")
            if tag not in members:
                raise DalabError(f"{spec} has no weights {tag!r} ({', '.join(members)})")
            w = members[tag]
            try:
                t = w.transforms()
                mean, std = tuple(getattr(t, "mean", mean)), tuple(getattr(t, "std", std))
            except (TypeError, AttributeError):
                pass
            weights = f"torchvision {w}"
        try:
            model = m.get_model(model_name, weights=w)
        except Exception as e:  # a download that failed: the network, a proxy, a full disk, a corrupt cache
            if w is None:
                raise
            raise _download_error(spec, lib, model_name, e) from None
        model, dim, head = _drop_torchvision_head(model)
        module, head_keys = _FirstOutput(model), (head,)
    else:
        if isinstance(pretrained, str):
            raise DalabError(f"{spec}: name timm's weights in the model name (e.g. resnet50.a1_in1k), not with "
                             f"--pretrained {pretrained}")
        try:
            model = m.create_model(model_name, pretrained=bool(pretrained), num_classes=0)
        except Exception as e:
            if not pretrained:
                raise
            raise _download_error(spec, lib, model_name, e) from None
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
        head = cfg.get("classifier") or ()
        head_keys = tuple(head) if isinstance(head, (tuple, list)) else (head,)
        dim, module = int(model.num_features), model
        if pretrained:
            weights = f"timm {cfg.get('hf_hub_id') or cfg.get('tag') or model_name}"
    if len(mean) != 3 or len(std) != 3:  # a grey-input model: stay with ImageNet's
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    bb = Backbone(module, dim, lib, model_name, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                  weights, tuple(head_keys))
    if init:
        inner = module.net if isinstance(module, _FirstOutput) else module
        load_init(inner, init, head_keys, spec)
        bb.weights = f"init {Path(init).name}"
    return bb


def _unwrap(obj, path) -> dict:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in obj.items()):
        raise DalabError(f"--init {path}: not a state dict (a dict of parameter names to tensors)")
    return obj


def load_init(module: nn.Module, path, head_keys=(), what: str = "the backbone") -> None:
    """Load the state dict at ``path`` into ``module`` exactly (see the module docstring for what is
    accepted); a file that does not fit is one DalabError with the counts and the first names."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DalabError(f"--init {p}: no such file")
    try:
        sd = _unwrap(torch.load(p, map_location="cpu", weights_only=True), p)
    except DalabError:
        raise
    except Exception as e:  # not a torch file, a pickle with code in it, a truncated file
        raise DalabError(f"--init {p}: not a readable state dict ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0][:160]})") from None
    own = module.state_dict()
    for prefix in ("module.", "backbone."):  # DDP's wrapper; a whole classifier's state dict (TLlib's)
        if not any(k in own for k in sd):
            inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            if any(k in own for k in inner):
                sd = inner
    heads = tuple(h + "." for h in head_keys if h)
    sd = {k: v for k, v in sd.items() if not (heads and k.startswith(heads))}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: {tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys, what_):
            return f"{len(keys)} {what_}{'s' if len(keys) != 1 else ''} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"

        parts = [few(v, w) for v, w in ((missing, "missing key"), (unexpected, "unexpected key"),
                                        (shapes, "shape mismatch")) if v]
        raise DalabError(f"--init {p} does not fit {what}: {', '.join(parts)}")
    module.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------ the network

class DomainDiscriminator(nn.Module):
    r"""TLlib's domain discriminator for photos: features (N, D) -> one domain logit (N,) (source 1, target 0).

    Linear(D, h) - BatchNorm1d - ReLU - Linear(h, h) - BatchNorm1d - ReLU - Linear(h, 1), h = 1024.
    """

    def __init__(self, in_features: int = BOTTLENECK, hidden: int = DOMAIN_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)


class PhotoNet(ThreeParts):
    """A backbone (pretrained or not) + bottleneck + classifier + GRL -> domain discriminator.

    ``PhotoNet("resnet50", num_classes=31, pretrained=True)`` resolves the name with
    :func:`make_backbone`; ``PhotoNet(my_module, num_classes, feature_dim=D)`` takes any module that
    maps normalised images to (N, D) features. :meth:`features` (bottleneck output, (N, 256)),
    :meth:`classify` and :meth:`domain_logits` are the parts DANN, CDAN, MCC and the consistency
    methods call; ``forward(x)`` gives class logits. See the module docstring for the layers.
    """

    #: methods pass source and target through in one concatenated batch (see the module docstring)
    joint_batch_norm = True

    def __init__(self, backbone: nn.Module | str, num_classes: int, feature_dim: int | None = None,
                 bottleneck_dim: int = BOTTLENECK, domain_hidden: int = DOMAIN_HIDDEN, pretrained: bool | str = False,
                 init: str | os.PathLike | None = None, mean=None, std=None):
        super().__init__()
        if isinstance(backbone, str):
            bb = make_backbone(backbone, pretrained=pretrained, init=init)
            module, dim, self.backbone_spec, self.weights = bb.module, bb.feature_dim, bb.spec, bb.weights
            mean, std = mean or bb.mean, std or bb.std
        else:
            if pretrained or init:
                raise DalabError("pretrained= and init= apply to a backbone given by name; load your module's "
                                 "weights before passing it")
            module, self.backbone_spec, self.weights = backbone, "custom", "given"
            dim = feature_dim or getattr(backbone, "out_features", None) or getattr(backbone, "num_features", None)
            if not dim:
                raise DalabError("pass feature_dim= for your own backbone module (the width of its output)")
        if int(num_classes) < 2:
            raise DalabError(f"num_classes must be at least 2, got {num_classes}")
        self.backbone = module
        self.bottleneck = nn.Sequential(nn.Linear(int(dim), bottleneck_dim), nn.BatchNorm1d(bottleneck_dim),
                                        nn.ReLU(inplace=True))
        self.label_head = nn.Linear(bottleneck_dim, int(num_classes))
        self.grl = GradientReversal(1.0)
        self.domain_head = DomainDiscriminator(bottleneck_dim, domain_hidden)
        self.register_buffer("input_mean", torch.tensor(mean or IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("input_std", torch.tensor(std or IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.backbone_dim, self.feature_dim, self.num_classes = int(dim), int(bottleneck_dim), int(num_classes)
        self.domain_hidden = int(domain_hidden)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images -> ``(x - mean) / std`` per channel."""
        x = to_unit_float(x)
        return (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> bottleneck features (N, 256)."""
        return self.bottleneck(self.backbone(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def param_groups(self, base_lr: float, backbone_ratio: float = BACKBONE_LR) -> list[dict]:
        """Optimiser groups: the backbone at ``backbone_ratio * base_lr`` (0.1x), the new layers
        (bottleneck, classifier, domain discriminator) at ``base_lr``. Each group keeps its ``lr`` as
        ``initial_lr`` too, so a schedule can scale both by the same factor."""
        new = [p for m in (self.bottleneck, self.label_head, self.domain_head) for p in m.parameters()]
        return [{"params": list(self.backbone.parameters()), "lr": float(base_lr) * backbone_ratio,
                 "initial_lr": float(base_lr) * backbone_ratio, "name": "backbone"},
                {"params": new, "lr": float(base_lr), "initial_lr": float(base_lr), "name": "new layers"}]

    def config(self) -> dict:
        """The plain settings that :meth:`from_config` (and ``dalab.models.build_model``) rebuild it from."""
        return {"arch": "photonet", "backbone": self.backbone_spec, "num_classes": self.num_classes,
                "bottleneck_dim": self.feature_dim, "domain_hidden": self.domain_hidden,
                "feature_dim": self.backbone_dim, "mean": self.input_mean.flatten().tolist(),
                "std": self.input_std.flatten().tolist(), "weights": self.weights}

    @classmethod
    def from_config(cls, config: dict) -> PhotoNet:
        """The same network with fresh weights (a checkpoint's state dict fills them); needs the library."""
        spec = str(config.get("backbone", ""))
        if spec in ("", "custom"):
            raise DalabError("this network has your own backbone module: build PhotoNet(your_module, ...) in Python "
                             "and load the state dict into it")
        return cls(spec, int(config["num_classes"]), bottleneck_dim=int(config.get("bottleneck_dim", BOTTLENECK)),
                   domain_hidden=int(config.get("domain_hidden", DOMAIN_HIDDEN)),
                   mean=tuple(config["mean"]) if config.get("mean") else None,
                   std=tuple(config["std"]) if config.get("std") else None)
