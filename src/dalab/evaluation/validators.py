r"""Label-free validators for unsupervised domain adaptation (model selection without target labels).

Each validator is a pure function of a model's outputs on *unlabelled* target images
(and, for some, labelled source validation data) and returns a score where **higher is
better**. None of them takes a target label. Inputs are plain tensors:

- ``logits_t`` (N_t, C): class logits on target images; ``feats_*`` (N, D): features.
- ``logits_sv`` (N_v, C), ``y_sv`` (N_v,): source validation logits and labels.

Validators (with their papers):

- ``source-acc``: accuracy on the source validation split (the naive baseline).
- ``entropy``: :math:`-\frac1N \sum_i H(p_i)` (Morerio et al., ICLR 2018: low target entropy).
- ``info-max``: :math:`H(\bar p) - \frac1N\sum_i H(p_i)`, :math:`\bar p` the mean prediction
  (mutual information between input and prediction; confident *and* diverse).
- ``bnm``: :math:`\|P\|_\star / N`, the nuclear norm of the (N, C) softmax matrix
  (Cui et al., CVPR 2020, batch nuclear-norm maximisation).
- ``snd``: soft neighbourhood density (Saito et al., ICCV 2021): with L2-normalised
  predictions :math:`\hat p_i`, :math:`S_{ij} = \hat p_i^\top \hat p_j` (:math:`i \ne j`),
  :math:`Q_i = \mathrm{softmax}_j(S_{ij} / \tau)`, score :math:`\frac1N \sum_i H(Q_i)`, :math:`\tau = 0.05`.
- ``dev``: deep embedded validation (You et al., ICML 2019). A logistic-regression domain
  classifier on features gives :math:`w(x) = \frac{n_s}{n_t} \frac{d(x)}{1 - d(x)}`
  (:math:`d` = P(target | x)); on source validation :math:`L_i = w_i \ell_i` with
  :math:`\ell_i` the cross-entropy; :math:`\eta = -\mathrm{Cov}(L, w)/\mathrm{Var}(w)`;
  :math:`\mathrm{DEV} = \bar L + \eta \bar w - \eta` (an unbiased, variance-reduced estimate
  of the target risk). Score = :math:`-\mathrm{DEV}`.
- ``reverse``: reverse validation (Zhong et al., ECML 2010), the light variant: fit a
  multinomial logistic regression on *target* features labelled with the model's own
  predictions, and score its accuracy on the labelled *source* validation features. (The
  original retrains the whole network in the reverse direction; this keeps the features.)

Validators for dense prediction (segmentation), on per-pixel outputs: ``logits`` (B, K, H, W) maps
or (P, K) rows of sampled pixels, predictions (B, H, W) or (P,) class ids. They are listed in
:data:`SEG_VALIDATORS` (and in :data:`VALIDATORS`); a selection run scores a segmentation run with
them, a classification run never:

- ``class-entropy`` (:func:`class_entropy`): the entropy validator of Morerio et al. (ICLR 2018)
  averaged per *predicted class*, as mIoU averages per class, so that a small class weighs as much
  as the road: :math:`-\frac{1}{|C|}\sum_{c \in C} \frac{1}{|P_c|}\sum_{i \in P_c} H(p_i)` with
  :math:`P_c` the pixels predicted as :math:`c` and :math:`C` the classes predicted at least
  ``min_pixels`` times. The per-class averaging is dalab's adaptation to dense prediction; no
  published form of it was found.
- ``teacher-agreement`` (:func:`teacher_agreement`): the mIoU between the argmax maps of a model and
  of its weight average (the EMA kept in the trainer's ``ckpt.pt``: ``"model"`` the raw weights,
  ``"ema"`` the average). Agreement between two networks' predictions on unlabelled data tracks
  their accuracy under distribution shift (Jiang, Nagarajan, Baek & Kolter, "Assessing
  generalization of SGD via disagreement", ICLR 2022; Baek, Jiang, Raghunathan & Kolter,
  "Agreement-on-the-line", NeurIPS 2022); here the pair is a model and its own average, not two
  independently trained networks, so what it measures is how far the last weights stray from
  their average on target images.
- ``augmentation-agreement`` (:func:`augmentation_agreement`): the mIoU between a model's argmax
  map of the target images and its map of transformed images mapped back (e.g. flipped, predicted,
  flipped back): the agreement above with the second network replaced by the same network on
  another view; consistency of segmentation under such transformations is what Araslanov & Roth
  ("Self-supervised augmentation consistency for adapting semantic segmentation", CVPR 2021) train
  for.

Each is higher for a better model, like the others.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: dense-prediction validators (functions below): defined for segmentation runs only (``Task.validators``)
SEG_VALIDATORS = ("class-entropy", "teacher-agreement", "augmentation-agreement")
VALIDATORS = ("source-acc", "entropy", "info-max", "bnm", "snd", "dev", "reverse") + SEG_VALIDATORS


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def source_accuracy(logits_sv: torch.Tensor, y_sv: torch.Tensor) -> float:
    return (logits_sv.argmax(1) == y_sv).float().mean().item()


def target_entropy(logits_t: torch.Tensor) -> float:
    """Negative mean prediction entropy (higher = more confident)."""
    return -_entropy(_probs(logits_t)).mean().item()


def info_max(logits_t: torch.Tensor) -> float:
    p = _probs(logits_t)
    return (_entropy(p.mean(0)) - _entropy(p).mean()).item()


def bnm(logits_t: torch.Tensor) -> float:
    p = _probs(logits_t)
    return (torch.linalg.svdvals(p).sum() / p.shape[0]).item()


def snd(logits_t: torch.Tensor, temperature: float = 0.05, max_n: int = 2000, seed: int = 0) -> float:
    """Soft neighbourhood density on (at most ``max_n``, a fixed random subset) target predictions."""
    p = _probs(logits_t)
    if len(p) > max_n:
        idx = torch.randperm(len(p), generator=torch.Generator().manual_seed(seed))[:max_n]
        p = p[idx.to(p.device)]
    p = F.normalize(p, dim=1)
    s = p @ p.t()
    s.fill_diagonal_(float("-inf"))
    q = F.softmax(s / temperature, dim=1)
    return _entropy(q).mean().item()


def _logreg(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, random_state=seed))
    with warnings.catch_warnings():  # a not fully converged fit is still a usable score
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def importance_weights(feats_s: torch.Tensor, feats_t: torch.Tensor, feats_sv: torch.Tensor,
                       seed: int = 0, clip: float = 1e3) -> np.ndarray:
    """Density ratio ``p_t(x) / p_s(x)`` at ``feats_sv`` from a domain classifier trained on
    ``feats_s`` (label 0) vs ``feats_t`` (label 1): ``(n_s/n_t) d / (1 - d)``, clipped."""
    x = torch.cat([feats_s, feats_t]).float().cpu().numpy()
    y = np.r_[np.zeros(len(feats_s)), np.ones(len(feats_t))]
    clf = _logreg(x, y, seed=seed)
    d = clf.predict_proba(feats_sv.float().cpu().numpy())[:, 1].clip(1e-6, 1 - 1e-6)
    return np.clip(len(feats_s) / len(feats_t) * d / (1 - d), 0.0, clip)


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """DEV's control-variate estimate of the target risk from per-sample source-val losses and
    importance weights (You et al. 2019, Algorithm 1); lower is better."""
    losses, weights = np.asarray(losses, float), np.asarray(weights, float)
    wl = weights * losses
    var_w = weights.var(ddof=1) if len(weights) > 1 else 0.0
    if var_w <= 0 or not math.isfinite(var_w):
        return float(wl.mean())
    eta = -np.cov(wl, weights, ddof=1)[0, 1] / var_w
    return float(wl.mean() + eta * weights.mean() - eta)


def dev_score(feats_s: torch.Tensor, feats_t: torch.Tensor, feats_sv: torch.Tensor,
              logits_sv: torch.Tensor, y_sv: torch.Tensor, seed: int = 0) -> float:
    w = importance_weights(feats_s, feats_t, feats_sv, seed=seed)
    losses = F.cross_entropy(logits_sv.float(), y_sv, reduction="none").cpu().numpy()
    return -dev_risk(losses, w)


def reverse_validation(feats_t: torch.Tensor, logits_t: torch.Tensor, feats_sv: torch.Tensor,
                       y_sv: torch.Tensor, seed: int = 0) -> float:
    """Accuracy on source validation of a linear classifier fit to target pseudo-labels."""
    pseudo = logits_t.argmax(1).cpu().numpy()
    ys = y_sv.cpu().numpy()
    if len(np.unique(pseudo)) < 2:
        return float((ys == pseudo[0]).mean())
    clf = _logreg(feats_t.float().cpu().numpy(), pseudo, seed=seed)
    return float((clf.predict(feats_sv.float().cpu().numpy()) == ys).mean())


def compute_validators(names, *, logits_t=None, feats_t=None, logits_sv=None, y_sv=None, feats_sv=None,
                       feats_s=None, source_score: float | None = None, logits_t_raw=None, logits_t_flip=None,
                       seed: int = 0) -> dict[str, float]:
    """Scores (higher is better) for each validator in ``names`` from precomputed outputs;
    ``source_score`` (e.g. a segmentation model's source val mIoU) is ``source-acc`` when given."""
    out = {}
    needs = {"entropy": (logits_t,), "info-max": (logits_t,), "bnm": (logits_t,), "snd": (logits_t,),
             "dev": (feats_s, feats_t, feats_sv, logits_sv, y_sv), "reverse": (feats_t, logits_t, feats_sv, y_sv),
             "class-entropy": (logits_t,), "teacher-agreement": (logits_t, logits_t_raw),
             "augmentation-agreement": (logits_t, logits_t_flip)}
    for n in names:
        if any(v is None or len(v) == 0 for v in needs.get(n, ())):  # a split it needs is missing (e.g. no source val)
            out[n] = float("nan")
        elif n == "source-acc":
            out[n] = (source_accuracy(logits_sv, y_sv) if logits_sv is not None
                      else float("nan") if source_score is None else source_score)
        elif n == "entropy":
            out[n] = target_entropy(logits_t)
        elif n == "info-max":
            out[n] = info_max(logits_t)
        elif n == "bnm":
            out[n] = bnm(logits_t)
        elif n == "snd":
            out[n] = snd(logits_t, seed=seed)
        elif n == "dev":
            out[n] = dev_score(feats_s, feats_t, feats_sv, logits_sv, y_sv, seed=seed)
        elif n == "reverse":
            out[n] = reverse_validation(feats_t, logits_t, feats_sv, y_sv, seed=seed)
        elif n == "class-entropy":
            out[n] = class_entropy(logits_t)
        elif n == "teacher-agreement":  # the run's kept model (its weight average) against its raw weights
            out[n] = teacher_agreement(logits_t_raw, logits_t)
        elif n == "augmentation-agreement":
            out[n] = augmentation_agreement(logits_t, logits_t_flip)
        else:
            raise ValueError(f"unknown validator {n!r} ({', '.join(VALIDATORS)})")
    return out


# ------------------------------------------------------------------------------- dense prediction

def _pixel_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) maps or (P, K) rows -> (P, K) rows of per-pixel logits."""
    if logits.dim() == 2:
        return logits
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, K, H, W) or (P, K), got shape {tuple(logits.shape)}")
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def class_entropy(logits: torch.Tensor, min_pixels: int = 1) -> float:
    """Negative mean over the predicted classes of the mean pixel entropy (nats) of the pixels
    predicted as that class; classes predicted fewer than ``min_pixels`` times are left out."""
    p = _probs(_pixel_rows(logits))
    ent, pred = _entropy(p), p.argmax(1)
    k = p.shape[1]
    n = torch.bincount(pred, minlength=k).double()
    s = torch.bincount(pred, weights=ent.double(), minlength=k)
    keep = n >= max(1, int(min_pixels))
    if not keep.any():
        raise ValueError(f"no class is predicted at least {min_pixels} times")
    return -(s[keep] / n[keep]).mean().item()


def prediction_miou(pred_a: torch.Tensor, pred_b: torch.Tensor, num_classes: int) -> float:
    """mIoU between two class-id maps of the same shape, each one's IoU per class over the classes
    that occur in either (symmetric; 1 for identical maps)."""
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"prediction maps differ in shape: {tuple(pred_a.shape)} and {tuple(pred_b.shape)}")
    a, b = pred_a.reshape(-1).long(), pred_b.reshape(-1).long().to(pred_a.device)
    k = int(num_classes)
    cm = torch.bincount(a * k + b, minlength=k * k).reshape(k, k).double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    keep = union > 0
    return (inter[keep] / union[keep]).mean().item() if keep.any() else float("nan")


def teacher_agreement(logits_model: torch.Tensor, logits_ema: torch.Tensor) -> float:
    """mIoU between the argmax maps of a model and of its EMA on the same target images; logits
    (B, K, H, W) or (P, K) rows of the same pixels."""
    a, b = _pixel_rows(logits_model), _pixel_rows(logits_ema)
    return prediction_miou(a.argmax(1), b.argmax(1), a.shape[1])


def augmentation_agreement(logits: torch.Tensor, logits_transformed_back: torch.Tensor) -> float:
    """mIoU between a model's argmax map of the target images and its map of transformed images
    mapped back onto them (e.g. ``flip(model(flip(x)))``); logits (B, K, H, W) or (P, K) rows."""
    return teacher_agreement(logits, logits_transformed_back)
