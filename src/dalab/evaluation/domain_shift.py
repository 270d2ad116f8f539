"""How far apart two domains are in a feature space: proxy A-distance and t-SNE.

Proxy A-distance (Ben-David et al. 2007; Ganin et al. 2016, Sec. 5.1): train a linear
classifier to tell source features from target features, measure its error ``err`` on
held-out features, and report ``PAD = 2 (1 - 2 err)``. 2 means perfectly separable
domains, 0 means indistinguishable. Only domain membership is used, never class labels.
"""

from __future__ import annotations

import numpy as np


def proxy_a_distance(fs: np.ndarray, ft: np.ndarray, seed: int = 0,
                     Cs: tuple[float, ...] = (0.01, 0.1, 1.0)) -> dict:
    """PAD of source features ``fs`` (N, D) vs target features ``ft`` (M, D).

    Splits each domain 50/25/25 into train / validation / test, picks the linear SVM's C
    on validation, refits on train and measures the error on the held-out test part.
    Returns ``{"pad", "error", "C", "n"}``.
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    fs = np.asarray(fs, np.float64).reshape(len(fs), -1)
    ft = np.asarray(ft, np.float64).reshape(len(ft), -1)
    n = min(len(fs), len(ft))
    if n < 8:
        raise ValueError(f"proxy A-distance needs at least 8 samples per domain, got {n}")
    rng = np.random.default_rng(seed)
    fs, ft = fs[rng.permutation(len(fs))[:n]], ft[rng.permutation(len(ft))[:n]]
    a, b = n // 2, (3 * n) // 4

    def part(lo, hi):
        x = np.concatenate([fs[lo:hi], ft[lo:hi]])
        y = np.concatenate([np.ones(hi - lo), np.zeros(hi - lo)])
        return x, y

    (xtr, ytr), (xva, yva), (xte, yte) = part(0, a), part(a, b), part(b, n)
    scaler = StandardScaler().fit(xtr)
    xtr, xva, xte = scaler.transform(xtr), scaler.transform(xva), scaler.transform(xte)

    def fit(C, x, y):
        return LinearSVC(C=C, dual=False, max_iter=2000).fit(x, y)

    models = {C: fit(C, xtr, ytr) for C in Cs}  # liblinear's primal solver is deterministic: no refit
    best = min(Cs, key=lambda C: (np.mean(models[C].predict(xva) != yva), C))
    err = float(np.mean(models[best].predict(xte) != yte))
    return {"pad": 2.0 * (1.0 - 2.0 * err), "error": err, "C": float(best), "n": int(n)}


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding (N, 2) of (N, D) features (PCA to 50 dims first, as is usual)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float32).reshape(len(features), -1)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3.0))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x).astype(np.float32)
