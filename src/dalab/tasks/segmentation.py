r"""Semantic segmentation: a label map per image.

Labels ``y`` (B, H, W) uint8 holding train ids 0..K-1 and :data:`IGNORE` (255) for unscored
pixels; logits (B, K, h, w) at any resolution; loss and scores first upsample the logits
bilinearly to the label's (H, W). The loss is the cross-entropy averaged over the scored pixels
of the batch; a batch whose pixels are all ignored has loss 0 and no gradient (not 0/0).

The score is the mean intersection-over-union of one confusion matrix accumulated over **all**
pixels of the set (not a mean of per-image scores):

.. math::

    \mathrm{IoU}_c = \frac{M_{cc}}{\sum_j M_{cj} + \sum_i M_{ic} - M_{cc}}, \qquad
    \mathrm{mIoU} = \frac{1}{|P|} \sum_{c \in P} \mathrm{IoU}_c

with :math:`M_{ij}` the number of pixels of true class *i* predicted as *j* and :math:`P` the
classes **present in the labels** of the set. A class that never occurs in the labels is left
out of the mean even when it is predicted (its false positives still lower the IoU of the true
classes of those pixels); ADVENT/FDA's ``np.nanmean`` would count it with IoU 0. On Cityscapes
val all 19 classes occur, so the two rules agree there. Pixel accuracy is
:math:`\sum_c M_{cc} / \sum_{ij} M_{ij}`. Ignored pixels count nowhere. A set with no scored
pixel has no score (None).

Labels of one batch may come at several sizes (a split of mixed resolutions, scored at each
label's full resolution): ``y`` may then be a list of (H_i, W_i) maps, one per image.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import DalabError
from ..models.inference import evaluating
from .base import Task

IGNORE = 255


def upsample_to(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size`` = (H, W); a no-op when they match."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts ``M[true, predicted]`` over every scored pixel (labels < K)."""
    yl = y.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = yl < num_classes
    return torch.bincount(yl[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def scores_from_confusion(cm: torch.Tensor, class_names=None) -> dict:
    """mIoU over the classes present in the labels, per-class IoU (None for absent classes) and pixel
    accuracy; None for either where the set holds no scored pixel."""
    cm = cm.double().cpu()
    tp = cm.diag()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    total = cm.sum()
    iou = [None if gt[c] == 0 else float(tp[c] / union[c]) for c in range(cm.shape[0])]
    scored = [v for v in iou if v is not None]
    names = list(class_names) if class_names is not None else [str(c) for c in range(cm.shape[0])]
    return {"miou": sum(scored) / len(scored) if scored else None,
            "pixel_acc": float(tp.sum() / total) if total > 0 else None,
            "per_class_iou": {names[c]: iou[c] for c in range(len(iou))},
            "classes_scored": len(scored)}


def miou_over(per_class_iou: dict, classes) -> tuple[float | None, int]:
    """(mean IoU over the named ``classes`` present in the labels, how many were present), from a
    :func:`scores_from_confusion` per-class table; e.g. SYNTHIA -> Cityscapes' 16-class score.
    A name not in the table is a ValueError."""
    unknown = [c for c in classes if c not in per_class_iou]
    if unknown:
        raise ValueError(f"no class {', '.join(map(repr, unknown))} (classes: {', '.join(per_class_iou)})")
    vals = [per_class_iou[c] for c in classes if per_class_iou[c] is not None]
    return (sum(vals) / len(vals) if vals else None), len(vals)


class Segmentation(Task):
    name = "segmentation"
    metric = "miou"
    metric_name = "mIoU"
    dense = True
    eval_batch = 256
    # SegNet with Adam at 1e-3 (Ganin's annealing) on 16 + 16 images per step for 3 epochs: a run of a few
    # minutes on 2 CPU cores for the procedural scenes (docs/segmentation.md)
    recipe: ClassVar[dict] = {"epochs": 3, "batch_size": 16, "optimizer": "adam", "arch": "segnet"}
    archs = ("segnet",)
    validators = ("source-acc", "entropy", "info-max", "bnm", "snd", "class-entropy", "teacher-agreement",
                  "augmentation-agreement")
    prediction_columns = ("path", "mask", "mean_confidence")

    def check_labels(self, y, name: str) -> torch.Tensor:
        y = torch.as_tensor(y)
        if y.ndim != 3 or y.dtype != torch.uint8:
            raise DalabError(f"{name}: label maps must be a (N, H, W) uint8 tensor of train ids (255 = ignored), "
                             f"got {tuple(y.shape)} {y.dtype}")
        return y

    def loss(self, logits, y, reduction: str = "mean"):
        logits = upsample_to(logits, y.shape[-2:]).float()
        yl = y.long()
        if reduction != "mean":
            return F.cross_entropy(logits, yl, ignore_index=IGNORE, reduction=reduction)
        # the mean over scored pixels, written as sum / count so that an all-ignored batch gives 0, not 0/0
        # (bit-identical to reduction="mean" otherwise)
        return (F.cross_entropy(logits, yl, ignore_index=IGNORE, reduction="sum")
                / (yl != IGNORE).sum().clamp(min=1))

    def accuracy(self, logits, y):
        pred = upsample_to(logits, y.shape[-2:]).argmax(1)
        yl = y.long()
        valid = yl != IGNORE
        return ((pred == yl) & valid).sum().float() / valid.sum().clamp(min=1).float()

    @torch.inference_mode()
    def evaluate(self, model, batches, num_classes: int, precision: str = "fp32", domain=None, class_names=None,
                 reduce=None) -> dict:
        k = num_classes
        with evaluating(model, precision, domain) as dev:
            counts = torch.zeros(k * k + 1, dtype=torch.long, device=dev)  # confusion matrix, then images
            for xb, yb in batches:
                logits = model(xb.to(dev, non_blocking=True)).float()
                maps = [yb] if torch.is_tensor(yb) else [y[None] for y in yb]  # one size, or one per image
                start = 0
                for y in maps:
                    y = y.to(dev, non_blocking=True)
                    part = logits[start:start + len(y)]
                    start += len(y)
                    counts[:-1] += confusion_matrix(upsample_to(part, y.shape[-2:]).argmax(1), y, k).reshape(-1)
                counts[-1] += len(xb)
        if reduce is not None:
            counts = reduce(counts)
        return {**scores_from_confusion(counts[:-1].reshape(k, k), class_names), "n": int(counts[-1])}

    def score_fields(self, split: str, scores: dict | None) -> dict:
        out = super().score_fields(split, scores)
        out[f"{split}_pixel_acc"] = None if scores is None else scores.get("pixel_acc")
        if split == "target_test":
            out["target_test_per_class_iou"] = None if scores is None else scores.get("per_class_iou")
        return out

    def train_options(self, cfg, labels: bool) -> dict:
        """The options of a streamed segmentation split's training loader
        (:meth:`dalab.data.seg_real.StreamSplit.loader`): images at the dataset's base size (or as stored,
        ``resize="native"``), random scale, ``crop_size`` crops and flips. ``labels`` False: no label file
        is opened (a target trained without labels)."""
        return {"crop": cfg.crop_size, "size": "native" if cfg.resize == "native" else "base", "labels": labels}

    def eval_options(self, eval_size=None, image_size=None, labels: bool = True, transform: str = "standard") -> dict:
        """The options of an evaluation loader: images at ``eval_size`` (a size, ``"base"`` or ``"native"``;
        default the dataset's base size), labels at full size."""
        return {"size": eval_size or "base", "labels": labels}

    # ------------------------------------------------------------------ label-free selection
    def validator_inputs(self, model, *, source_val, source_train, target, needed, num_classes: int,
                         seed: int = 0, pixels: int = 20000, raw_model=None) -> dict:
        """``source-acc`` is the source val mIoU; the others take the class logits of about ``pixels``
        target pixels drawn at random (fixed by ``seed``) from the predicted maps, never a target label:
        the model's (``logits_t``), at the same pixels its map of the flipped images flipped back
        (``logits_t_flip``, for ``augmentation-agreement``) and the raw weights' map (``logits_t_raw``,
        ``raw_model``: the run's weights before averaging, for ``teacher-agreement``)."""
        from ..models.inference import predict_logits

        out: dict = {}
        if "source-acc" in needed:
            out["source_score"] = self.evaluate(model, source_val, num_classes, domain="source")["miou"]
        if any(v != "source-acc" for v in needed):
            images = [xb for xb, _ in target]
            n = sum(len(x) for x in images)
            g = torch.Generator().manual_seed(seed)
            per_image = max(1, pixels // max(n, 1))
            maps = {"logits_t": lambda x: predict_logits(model, x, batch_size=256, domain="target")}
            if "augmentation-agreement" in needed:
                maps["logits_t_flip"] = lambda x: predict_logits(model, x.flip(-1), batch_size=256,
                                                                 domain="target").flip(-1)
            if "teacher-agreement" in needed and raw_model is not None:
                maps["logits_t_raw"] = lambda x: predict_logits(raw_model, x, batch_size=256, domain="target")
            picked = {k: [] for k in maps}
            for xb in images:  # a batch of (B, K, H, W) maps at a time, never all of them
                idx = None
                for k, f in maps.items():
                    lg = f(xb)
                    flat = lg.permute(0, 2, 3, 1).reshape(len(lg), -1, lg.shape[1])  # (B, HW, K)
                    if idx is None:  # the same pixels in every map
                        idx = torch.randint(0, flat.shape[1], (len(lg), per_image), generator=g).to(flat.device)
                    picked[k].append(torch.gather(flat, 1, idx[..., None].expand(-1, -1, flat.shape[2])).reshape(
                        -1, flat.shape[2]))
            out.update({k: torch.cat(v) for k, v in picked.items()})
        return out

    # ------------------------------------------------------------------ predictions and figures
    def predict_files(self, model, config, files, out_dir=None):
        """One colour-coded mask PNG per image, written atomically into ``out_dir``: the image is
        resized to the model's training input size and its predicted map brought back to the image's
        own size."""
        import io
        from pathlib import Path

        import numpy as np
        from PIL import Image

        from ..data.cityscapes_labels import colorize
        from ..data.io import atomic_write_bytes
        from ..data.mnistm import read_rgb
        from ..models.inference import predict_logits

        if not out_dir:
            raise DalabError("--out-dir DIR is required for a segmentation model (the masks are written there)")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise DalabError(f"--out-dir {out}: exists and is not a folder")
        h, w = (int(v) for v in (config.get("input") or [3, 48, 96])[1:])
        rows, errors, seen = [], [], {}
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            try:
                img = read_rgb(Path(f))
            except DalabError as e:
                errors.append((str(f), str(e)))
                continue
            x = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), np.uint8)
            t = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
            probs = torch.softmax(predict_logits(model, t, domain="target"), 1)  # (1, K, h, w)
            probs = F.interpolate(probs, size=img.shape[:2], mode="bilinear", align_corners=False)
            conf, lab = probs[0].cpu().max(0)
            buf = io.BytesIO()
            Image.fromarray(colorize(lab.numpy().astype(np.uint8))).save(buf, format="PNG")
            stem = Path(f).stem
            seen[stem] = seen.get(stem, 0) + 1
            if seen[stem] > 1:  # a/1.png and b/1.jpg: the second gets its own file, never the first's
                stem = f"{stem}_{seen[stem]}"
            mask = out / f"{stem}_mask.png"
            atomic_write_bytes(mask, buf.getvalue())
            rows.append({"path": str(f), "mask": str(mask), "mean_confidence": round(float(conf.mean()), 6)})
        return rows, errors

    def prediction_line(self, row: dict) -> str:
        return f"{row['path']}\t{row['mask']}\t{row['mean_confidence']:.4f}"

    def draw_examples(self, split, path, n: int, seed: int, title: str | None) -> None:
        from .figures import save_segmentation_grid

        save_segmentation_grid(split, path, n=min(n, 16), seed=seed, title=title)
