"""Training configuration: every knob of a run, recorded in its summary and checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import DalabError
from ..tasks import TASKS
from .schedules import SCHEDULES
from ..models.nets import ARCHS, INPUT_NORMS

DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
# a task's own defaults, where they differ from TrainConfig's (which are the digits'): the CLI and the
# benchmark suites take them for a pair of that task unless a flag says otherwise (dalab.tasks)
TASK_RECIPES = {name: dict(t.recipe) for name, t in TASKS.items() if t.recipe}


@dataclass
class TrainConfig:
    method: str = "dann"
    source: str = "mnist"
    target: str = "mnistm"
    epochs: int = 10
    # steps per epoch; None: one pass over the (primary) training set, len // batch_size (TLlib's photo
    # scripts count 1,000 iterations per epoch instead)
    steps_per_epoch: int | None = None
    seed: int = 0
    batch_size: int = 64            # per domain: 64 source + 64 target images per step
    optimizer: str = "sgd"          # sgd (momentum 0.9, Ganin's annealing) or adam
    lr: float | None = None         # None -> 0.01 for SGD, 1e-3 for Adam (absolute, never relative)
    momentum: float = 0.9
    nesterov: bool = False          # SGD: Nesterov momentum (the photo recipe's, as TLlib)
    adam_beta1: float = 0.9         # Adam's first-moment decay (Shu et al. 2018 use 0.5)
    weight_decay: float = 0.0
    lr_schedule: str = "ganin"      # ganin: lr0 / (1 + 10 p)^0.75 ; inv: lr0 (1 + 0.001 step)^-0.75 ; constant
    # linear learning-rate warm-up over this fraction of the run (0: none); None: the method's recipe (e.g. daformer's
    # 1500 of 40,000 iterations), else none
    warmup: float | None = None
    # segmentation: draw source images by rare-class sampling (DAFormer; data/rcs.py); None: the method's recipe
    rare_class_sampling: bool | None = None
    lambda_max: float = 1.0
    lambda_schedule: str = "ganin"  # ganin ramp with gamma, or constant
    gamma: float = 10.0
    # dalab's defaults add batch norm (per-domain batch statistics in DANN) and per-image input
    # standardisation to Ganin's network: DANN's MNIST-M accuracy rises from 78.9 % (Ganin's net,
    # seed 0) to 86.2 % (3 seeds) at about the same cost (see docs/results.md). Ganin's exact setting:
    # batch_norm=False, input_norm="none", ema_decay=0.
    # the network: "ganin" (Ganin's MNIST net, 768 features) or "conv9" (Shu et al. 2018's 9-conv digit
    # net cut after its second block, 64x7x7 features, about 22x the compute: meant for a GPU)
    arch: str = "ganin"
    batch_norm: bool = True
    input_norm: str = "instance"    # none: (x - 0.5) / 0.5 ; instance: per-image, per-channel standardisation
    # with batch norm: "domain" keeps one set of running statistics per domain and evaluates each
    # domain with its own, recomputed before every evaluation from ``bn_calibration`` unlabelled
    # training images per domain (AdaBN; 0 keeps the statistics tracked during training);
    # "shared" is plain batch norm, one set of statistics for every domain (dalab 0.1)
    bn_stats: str = "domain"
    bn_calibration: int = 5000
    # auto: the fastest of fp32 / bf16 (x NCHW / channels_last) whose loss agrees with fp32's, measured on
    # this run's network, method, batch and device and cached per machine (training/autotune.py)
    precision: str = "auto"         # auto | fp32 | bf16
    channels_last: bool | None = None  # None: measured with precision auto; channels_last with an explicit one
    device: str = "auto"
    limit_train: int | None = None  # use only the first N training images of each domain
    limit_eval: int | None = None   # evaluate on the first N images of each eval split
    eval_every: int = 1             # epochs between evaluations / checkpoints
    data_dir: str | None = None
    ema_decay: float = 0.999        # > 0: evaluate and save an EMA of the weights; 0 = the raw last weights
    init_from: str | None = None    # start from the weights of a model.pt (e.g. for pseudo-labelling)
    method_args: dict | None = None  # method-specific hyper-parameters, e.g. {"beta": 0.01} (make_method)
    # domains read from files (gta5:PATH, cityscapes:PATH; see data/seg_real.py): training crops (H, W) after a
    # random scale in [0.5, 1.5] and a flip, the evaluation input size (H, W) (logits are scored at the labels'
    # full resolution), and the DataLoader worker processes per domain; unused for in-memory domains
    crop_size: list | None = None
    eval_size: list | None = None   # None: the size the training crops are cut from (see resize)
    workers: int = 2
    # photos: a torchvision or timm backbone by name (models/backbones.py) with the fine-tuning head; its weights from
    # that library (pretrained, downloaded on the user's machine) or from a state dict file (backbone_init)
    backbone: str | None = None
    pretrained: bool = False
    backbone_init: str | None = None
    image_size: int | None = None   # photos read from files: the training crop and evaluation size (None: 224)
    strict_files: bool = False      # photos: an unreadable file is an error at the start instead of skipped
    stream: bool = False            # folder:PATH streamed from its files even when it is small enough for memory
    # photos read from files: "standard" trains on random resized crops and flips (the ImageNet recipe), "resize"
    # on the evaluation view (shorter side resized to image_size, centre crop), for images already framed
    photo_transform: str = "standard"
    # domains read from files: "base" resizes each dataset to its papers' size first (GTA5 1280x720, Cityscapes
    # 1024x512, SYNTHIA 1280x760; data/seg_real.py), "native" keeps each file's own size
    resize: str = "base"

    def __post_init__(self) -> None:
        """Settings left to the method (None) take its recipe's value (``Method.recipe``), else off."""
        from ..methods import METHODS

        recipe = getattr(METHODS.get(self.method), "recipe", None) or {}
        if self.warmup is None:
            self.warmup = float(recipe.get("warmup", 0.0))
        if self.rare_class_sampling is None:
            self.rare_class_sampling = bool(recipe.get("rare_class_sampling", False))

    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.optimizer])

    def validate(self) -> "TrainConfig":
        def bad(msg):
            raise DalabError(msg)

        for name in ("epochs", "batch_size", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                bad(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.bn_stats not in ("domain", "shared"):
            bad(f"unknown bn stats {self.bn_stats!r} (domain, shared)")
        if not isinstance(self.bn_calibration, int) or self.bn_calibration < 0:
            bad(f"--bn-calibration must be an integer >= 0, got {self.bn_calibration!r}")
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch <= 0):
            bad(f"--steps-per-epoch must be a positive integer, got {self.steps_per_epoch!r}")
        for name in ("limit_train", "limit_eval"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                bad(f"--{name.replace('_', '-')} must be positive, got {v}")
        for name in ("lambda_max", "gamma", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                bad(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.adam_beta1) and 0.0 <= self.adam_beta1 < 1.0):
            bad(f"--adam-beta1 must be in [0, 1), got {self.adam_beta1}")
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
            bad(f"--lr must be a finite number > 0, got {self.lr}")
        if self.optimizer not in DEFAULT_LR:
            bad(f"unknown optimizer {self.optimizer!r} (sgd, adam)")
        if self.lr_schedule not in SCHEDULES:
            bad(f"unknown lr schedule {self.lr_schedule!r} ({', '.join(SCHEDULES)})")
        if not isinstance(self.rare_class_sampling, bool):
            bad(f"rare_class_sampling must be true or false, got {self.rare_class_sampling!r}")
        if not (isinstance(self.warmup, (int, float)) and math.isfinite(self.warmup) and 0.0 <= self.warmup < 1.0):
            bad(f"--warmup must be a fraction of the run in [0, 1), got {self.warmup!r}")
        if self.lambda_schedule not in ("ganin", "constant"):
            bad(f"unknown lambda schedule {self.lambda_schedule!r} (ganin, constant)")
        if not (math.isfinite(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            bad(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.arch not in ARCHS:
            bad(f"unknown arch {self.arch!r} ({', '.join(ARCHS)})")
        if self.input_norm not in INPUT_NORMS:
            bad(f"unknown input norm {self.input_norm!r} ({', '.join(INPUT_NORMS)})")
        for name in ("crop_size", "eval_size"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 2
                                      and all(isinstance(k, int) and k > 0 for k in v)):
                bad(f"--{name.replace('_', '-')} must be two positive integers HxW, got {v!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            bad(f"--image-size must be an integer >= 8, got {self.image_size!r}")
        if self.pretrained and self.backbone_init:
            bad("--pretrained and --init both give the backbone its weights: pass one of them")
        if (self.pretrained or self.backbone_init) and not self.backbone:
            bad("--pretrained and --init need --backbone NAME (a torchvision or timm model)")
        if self.photo_transform not in ("standard", "resize"):
            bad(f"unknown photo transform {self.photo_transform!r} (standard, resize)")
        if self.resize not in ("base", "native"):
            bad(f"unknown resize {self.resize!r} (base, native)")
        if not isinstance(self.workers, int) or self.workers < 0:
            bad(f"--workers must be an integer >= 0, got {self.workers!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            bad(f"unknown precision {self.precision!r} (auto, fp32, bf16)")
        if not (self.channels_last is None or isinstance(self.channels_last, bool)):
            bad(f"channels_last must be true, false or null (auto), got {self.channels_last!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
