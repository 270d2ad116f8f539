r"""Tasks: what a label is, the supervised loss on it, and how a model is scored.

dalab trains two tasks with the same trainer and the same methods interface:

- **classification**: labels ``y`` (B,) int64, logits (B, K); loss cross-entropy; score accuracy.
- **segmentation**: labels ``y`` (B, H, W) uint8 holding train ids 0..K-1 and :data:`IGNORE`
  (255) for unscored pixels; logits (B, K, h, w) at any resolution; loss and scores first
  upsample the logits bilinearly to the label's (H, W). The score is the mean
  intersection-over-union of one confusion matrix accumulated over **all** pixels of the set
  (not a mean of per-image scores):

  .. math::

      \mathrm{IoU}_c = \frac{M_{cc}}{\sum_j M_{cj} + \sum_i M_{ic} - M_{cc}}, \qquad
      \mathrm{mIoU} = \frac{1}{|P|} \sum_{c \in P} \mathrm{IoU}_c

  with :math:`M_{ij}` the number of pixels of true class *i* predicted as *j* and :math:`P`
  the classes **present in the labels** of the set. A class that never occurs in the labels is
  left out of the mean even when it is predicted (its false positives still lower the IoU of
  the true classes of those pixels); ADVENT/FDA's ``np.nanmean`` would count it with IoU 0.
  On Cityscapes val all 19 classes occur, so the two rules agree there. Pixel accuracy is
  :math:`\sum_c M_{cc} / \sum_{ij} M_{ij}`. Ignored pixels count nowhere.

The task is read off the label's shape (:func:`is_dense`), so a method written with
:func:`task_loss` serves both tasks, and a third task is one more branch here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255
TASKS = ("classification", "segmentation")


def is_dense(y: torch.Tensor) -> bool:
    """True for per-pixel labels (B, H, W), False for one label per image (B,)."""
    return y.dim() >= 3


def upsample_to(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size`` = (H, W); a no-op when they match."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def dense_labels(y: torch.Tensor) -> torch.Tensor:
    """uint8 train-id maps -> int64, with :data:`IGNORE` kept as the ignore value."""
    return y.long()


def task_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for either task: per-image labels (B,) or label maps (B, H, W) with IGNORE.

    Dense logits are upsampled to the label size first. ``reduction="none"`` returns (B,) or
    (B, H, W) per-sample losses (0 at ignored pixels).
    """
    if is_dense(y):
        logits = upsample_to(logits, y.shape[-2:])
        return F.cross_entropy(logits.float(), dense_labels(y), ignore_index=IGNORE, reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy (a 0-dim tensor): per image, or per scored pixel for label maps."""
    if is_dense(y):
        pred = upsample_to(logits, y.shape[-2:]).argmax(1)
        yl = dense_labels(y)
        valid = yl != IGNORE
        return ((pred == yl) & valid).sum().float() / valid.sum().clamp(min=1).float()
    return (logits.argmax(1) == y).float().mean()


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts ``M[true, predicted]`` over every scored pixel (labels < K)."""
    yl = y.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = yl < num_classes
    return torch.bincount(yl[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def scores_from_confusion(cm: torch.Tensor, class_names=None) -> dict:
    """mIoU over the classes present in the labels, per-class IoU (None for absent classes) and pixel accuracy."""
    cm = cm.double().cpu()
    tp = cm.diag()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    total = cm.sum()
    iou = []
    for c in range(cm.shape[0]):
        if gt[c] == 0:
            iou.append(None)  # not in the labels of this set: not part of the mean
        else:
            iou.append(float(tp[c] / union[c]))
    scored = [v for c, v in enumerate(iou) if v is not None]
    names = list(class_names) if class_names is not None else [str(c) for c in range(cm.shape[0])]
    return {"miou": sum(scored) / len(scored) if scored else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class_iou": {names[c]: iou[c] for c in range(len(iou))},
            "classes_scored": len(scored)}


def miou_over(per_class_iou: dict, classes) -> tuple[float, int]:
    """(mean IoU over the named ``classes`` present in the labels, how many were present), from a
    :func:`scores_from_confusion` per-class table; e.g. SYNTHIA -> Cityscapes' 16-class score.
    A name not in the table is a ValueError."""
    unknown = [c for c in classes if c not in per_class_iou]
    if unknown:
        raise ValueError(f"no class {', '.join(map(repr, unknown))} (classes: {', '.join(per_class_iou)})")
    vals = [per_class_iou[c] for c in classes if per_class_iou[c] is not None]
    return (sum(vals) / len(vals) if vals else float("nan")), len(vals)


METRICS = {"classification": "acc", "segmentation": "miou"}


def metric_of(task: str) -> str:
    """The headline score of a task, as it appears in summaries: ``source_test_<metric>``."""
    return METRICS[task]


def headline(summary: dict, split: str = "target_test"):
    """A run summary's headline score for ``split`` (accuracy or mIoU); None when it has none."""
    return summary.get(f"{split}_{summary.get('metric', 'acc')}")


def evaluate_model(model, x: torch.Tensor, y: torch.Tensor, task: str, num_classes: int,
                   batch_size: int = 256, precision: str = "fp32", domain: str | None = None,
                   class_names=None) -> dict:
    """Score ``model`` on images ``x`` and labels ``y`` (held anywhere; batches move to the model).

    classification: ``{"acc"}``; segmentation: :func:`scores_from_confusion` of one confusion matrix
    over every pixel, the logits upsampled to the label resolution.
    """
    batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    return evaluate_batches(model, batches, task, num_classes, precision, domain, class_names)


@torch.inference_mode()
def evaluate_batches(model, batches, task: str, num_classes: int, precision: str = "fp32",
                     domain: str | None = None, class_names=None, reduce=None) -> dict:
    """:func:`evaluate_model` over any iterable of (images, labels) batches, e.g. a DataLoader over
    files. ``reduce`` (e.g. a sum over processes) is applied to the accumulated counts before scoring."""
    from .models.batchnorm import bn_domain
    from .models.inference import autocast_ctx

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    k = num_classes if task == "segmentation" else 1
    counts = torch.zeros(k * k + 1, dtype=torch.long, device=dev)   # confusion matrix, or [correct, total]
    try:
        with autocast_ctx(dev, precision), bn_domain(model, domain):
            for xb, yb in batches:
                xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                logits = model(xb).float()
                if task == "classification":
                    counts[0] += (logits.argmax(1) == yb).sum()
                    counts[1] += len(yb)
                else:
                    counts[:-1] += confusion_matrix(upsample_to(logits, yb.shape[-2:]).argmax(1), yb,
                                                    num_classes).reshape(-1)
    finally:
        model.train(was_training)
    if reduce is not None:
        counts = reduce(counts)
    if task == "classification":
        return {"acc": counts[0].item() / counts[1].item() if counts[1] else float("nan")}
    return scores_from_confusion(counts[:-1].reshape(k, k), class_names)
