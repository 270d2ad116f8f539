r"""Classification: one label per image.

Labels ``y`` (B,) int64 class indices (-1 marks an unlabelled image, e.g. a flat image folder
used as target); logits (B, K); loss cross-entropy; score top-1 accuracy, the fraction of
correctly classified images of a split. A split with any unlabelled image has no accuracy
(None in summaries, ``n/a`` on screen).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import DalabError
from ..models.inference import evaluating
from .base import Task

DEFAULT_IMAGE_SIZE = 224  # ImageNet's crop, the backbones' native input


class Classification(Task):
    name = "classification"
    metric = "acc"
    metric_name = "accuracy"
    recipe: ClassVar[dict] = {}  # TrainConfig's defaults are the digits' recipe
    #: fine-tuning a pretrained backbone on photos (``--backbone``), as TLlib's image-classification scripts
    #: (examples/domain_adaptation/image_classification: SGD lr 0.01, momentum 0.9 with Nesterov, weight decay
    #: 1e-3, the inverse decay (1 + 0.001 step)^-0.75, batch 32, 20 epochs of 1,000 iterations; the backbone
    #: at 0.1x, models/backbones.py)
    backbone_recipe: ClassVar[dict] = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
                                       "weight_decay": 1e-3, "lr_schedule": "inv", "batch_size": 32,
                                       "epochs": 20, "steps_per_epoch": 1000}
    archs = ("ganin", "conv9")
    validators = ("source-acc", "entropy", "info-max", "bnm", "snd", "dev", "reverse")
    prediction_columns = ("path", "label", "confidence")

    def check_labels(self, y, name: str) -> torch.Tensor:
        y = torch.as_tensor(y)
        if y.ndim != 1 or y.is_floating_point() or y.is_complex():
            raise DalabError(f"{name}: labels must be a 1-d integer tensor of class indices, got "
                             f"{tuple(y.shape)} {y.dtype}")
        return y.long()

    def loss(self, logits, y, reduction: str = "mean"):
        return F.cross_entropy(logits, y, reduction=reduction)

    def accuracy(self, logits, y):
        return (logits.argmax(1) == y).float().mean()

    @torch.inference_mode()
    def evaluate(self, model, batches, num_classes: int, precision: str = "fp32", domain=None, class_names=None,
                 reduce=None) -> dict:
        with evaluating(model, precision, domain) as dev:
            counts = torch.zeros(3, dtype=torch.long, device=dev)  # correct, labelled, unlabelled
            for xb, yb in batches:
                xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                known = yb >= 0
                counts[0] += ((model(xb).float().argmax(1) == yb) & known).sum()
                counts[1] += known.sum()
                counts[2] += (~known).sum()
        if reduce is not None:
            counts = reduce(counts)
        correct, n, unlabelled = counts.tolist()
        return {"acc": correct / n if n and not unlabelled else None, "n": n + unlabelled}

    def train_options(self, cfg, labels: bool) -> dict:
        """The options of a streamed photo split's training loader (:meth:`dalab.data.photos.PhotoSplit.loader`):
        random resized crops of ``image_size`` (224 when not given) and flips, or with
        ``photo_transform="resize"`` the evaluation view (the shorter side resized to the crop, centre crop)."""
        size = cfg.image_size or DEFAULT_IMAGE_SIZE
        if getattr(cfg, "photo_transform", "standard") == "resize":
            return {"image_size": size, "resize": size, "scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip": False}
        return {"image_size": size}

    def eval_options(self, eval_size=None, image_size=None, labels: bool = True, transform: str = "standard") -> dict:
        """An evaluation loader's options: centre crops of ``image_size`` (224 when not given) after resizing
        the shorter side to 256/224 of it, or to the crop itself with ``transform="resize"``."""
        size = image_size or DEFAULT_IMAGE_SIZE
        return {"image_size": size, **({"resize": size} if transform == "resize" else {})}

    # ------------------------------------------------------------------ label-free selection
    def validator_inputs(self, model, *, source_val, source_train, target, needed, num_classes: int,
                         seed: int = 0, raw_model=None) -> dict:
        logits_sv, y_sv, feats_sv = _outputs(model, source_val, "source", labels=True)
        _, _, feats_s = _outputs(model, source_train, "source") if "dev" in needed else (None, None, None)
        logits_t, _, feats_t = _outputs(model, target, "target")
        return dict(logits_t=logits_t, feats_t=feats_t, logits_sv=logits_sv, y_sv=y_sv, feats_sv=feats_sv,
                    feats_s=feats_s)

    # ------------------------------------------------------------------ predictions and figures
    def predict_files(self, model, config, files, out_dir=None):
        from ..data.images import load_images
        from ..models.inference import predict_logits

        size = int((config.get("input") or [3, 28, 28])[-1])
        names = config.get("classes") or config.get("class_names")  # dalab <= 0.8 wrote neither; 0.8 "classes"
        if config.get("image_size"):  # trained on photos read from files: their evaluation transform
            size = int(config["image_size"])
            x, ok, bad = _photo_inputs(files, size, size if config.get("photo_transform") == "resize" else None)
        else:  # resized to the (small) input, as the in-memory domains were
            x, ok, bad = load_images(files, size)
        rows = []
        if len(ok):
            t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            probs = torch.softmax(predict_logits(model, t, domain="target"), dim=1)  # the domain adapted to
            conf, label = probs.max(dim=1)
            for path, lab, c in zip(ok, label.tolist(), conf.tolist()):
                row = {"path": str(path), "label": int(lab), "confidence": round(float(c), 6)}
                if isinstance(names, (list, tuple)) and lab < len(names):
                    row["class_name"] = str(names[lab])
                rows.append(row)
        return rows, [(str(p), msg) for p, msg in bad]

    def prediction_line(self, row: dict) -> str:
        name = f" ({row['class_name']})" if "class_name" in row else ""
        return f"{row['path']}\t{row['label']}{name}\t{row['confidence']:.4f}"

    def draw_examples(self, split, path, n: int, seed: int, title: str | None) -> None:
        from .figures import save_image_grid

        save_image_grid(split, path, n=n, seed=seed, title=title)


def _photo_inputs(files, image_size: int, resize: int | None = None):
    """(images (N, S, S, 3) uint8, files read, [(file, error)]): each file resized and centre-cropped as the
    evaluation of photo runs does (:func:`dalab.data.photo_transforms.eval_transform`)."""
    import numpy as np

    from ..data.images import decode_photo
    from ..data.photo_transforms import eval_transform
    from ..errors import DataError

    xs, ok, bad = [], [], []
    for f in files:
        try:
            xs.append(eval_transform(decode_photo(f), image_size, resize).transpose(1, 2, 0))
            ok.append(f)
        except DataError as e:
            bad.append((f, str(e)))
    x = np.stack(xs) if xs else np.empty((0, image_size, image_size, 3), np.uint8)
    return x, ok, bad


@torch.inference_mode()
def _outputs(model, batches, domain: str, labels: bool = False):
    """(logits, labels or None, features) of every batch, on the CPU as float32."""
    logits, ys, feats = [], [], []
    with evaluating(model, "fp32", domain) as dev:
        for xb, yb in batches:
            f = model.features(xb.to(dev)).float()
            feats.append(f)
            logits.append(torch.cat([model.classify(f[i:i + 4096]) for i in range(0, len(f), 4096)]).float())
            if labels:
                ys.append(yb.to(dev))
    cat = (lambda v: torch.cat(v) if v else None)
    return cat(logits), cat(ys), cat(feats)
