"""Pseudo-label quality, measured *after the fact* with target labels (report only).

Nothing here feeds training: the pseudo-labelling methods never see target labels. The
study calls these functions to say how accurate the kept pseudo-labels were.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.inference import predict_logits


def pseudo_label_curve(probs: np.ndarray, y_true: np.ndarray, thresholds) -> list[dict]:
    """Coverage (fraction kept) and accuracy of the kept labels for each confidence threshold."""
    probs = np.asarray(probs)
    conf, pred = probs.max(1), probs.argmax(1)
    out = []
    for t in thresholds:
        keep = conf >= t
        n = int(keep.sum())
        out.append({"threshold": float(t), "coverage": float(keep.mean()) if len(keep) else 0.0,
                    "accuracy": float((pred[keep] == y_true[keep]).mean()) if n else None, "kept": n})
    return out


def class_balanced_quality(probs: np.ndarray, y_true: np.ndarray, fraction: float) -> dict:
    """Coverage / accuracy of CBST-style selection (top ``fraction`` per predicted class)."""
    from ..methods.pseudo_label import select_pseudo_labels

    labels, keep = select_pseudo_labels(torch.as_tensor(np.asarray(probs)), class_balanced=True,
                                        fraction=fraction)
    labels, keep = labels.numpy(), keep.numpy()
    n = int(keep.sum())
    return {"fraction": float(fraction), "coverage": float(keep.mean()),
            "accuracy": float((labels[keep] == y_true[keep]).mean()) if n else None, "kept": n}


def model_probs(model, x: torch.Tensor, domain: str | None = "target") -> np.ndarray:
    return predict_logits(model, x, domain=domain).softmax(1).cpu().numpy()


def pseudo_label_quality(labels, mask, y_true) -> dict:
    """Accuracy / coverage of saved pseudo-labels (e.g. a run's ``pl_labels``/``pl_mask`` buffers)."""
    labels, mask, y_true = (np.asarray(a) for a in (labels, mask, y_true))
    n = int(mask.sum())
    return {"coverage": float(mask.mean()) if len(mask) else 0.0, "kept": n,
            "accuracy": float((labels[mask] == y_true[mask]).mean()) if n else None,
            "accuracy_all": float((labels == y_true).mean()) if len(labels) else None}
