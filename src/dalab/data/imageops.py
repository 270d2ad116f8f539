"""Vectorised image helpers shared by the extra domains: resize, channel fixing, splits.

Everything here works on whole uint8 stacks ``(N, H, W[, C])`` with numpy (no per-image
Python loop), so tens of thousands of images take well under a second or two.
"""

from __future__ import annotations

import numpy as np

SIZE = 28


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased linear (triangle) filter, rows summing to 1.

    Upsampling is plain bilinear interpolation (half-pixel centres); downsampling widens
    the triangle by the scale factor, like PIL's ``BILINEAR`` resize, so nothing aliases.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5          # output pixel centres in input coords
    src = np.arange(n_in)
    w = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    # pixels beyond the border are clamped to the edge: fold their weight onto the edge pixels
    w_sum = w.sum(1, keepdims=True)
    w_sum[w_sum == 0] = 1.0
    return w / w_sum


def resize_batch(x: np.ndarray, size: int = SIZE, chunk: int = 8192) -> np.ndarray:
    """Resize a stack ``(N, H, W[, C])`` of uint8 images to ``(N, size, size[, C])`` uint8."""
    x = np.asarray(x)
    if x.shape[1] == size and x.shape[2] == size:
        return x.astype(np.uint8, copy=False)
    a = _resize_matrix(x.shape[1], size).astype(np.float32)
    b = _resize_matrix(x.shape[2], size).astype(np.float32)
    out = np.empty((x.shape[0], size, size) + x.shape[3:], np.uint8)
    spec = "oh,nhw...,pw->nop..."
    for i in range(0, len(x), chunk):
        r = np.einsum(spec, a, x[i:i + chunk].astype(np.float32), b, optimize=True)
        out[i:i + chunk] = np.clip(np.rint(r), 0, 255).astype(np.uint8)
    return out


def to_rgb_or_grey(x: np.ndarray) -> np.ndarray:
    """(N,H,W) or (N,H,W,1|3|4) -> (N,H,W,1) or (N,H,W,3): alpha dropped, grey kept as 1 channel."""
    x = np.asarray(x)
    if x.ndim == 3:
        return x[..., None]
    if x.shape[-1] == 4:
        return x[..., :3]
    if x.shape[-1] == 2:  # grey + alpha
        return x[..., :1]
    return x


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Deterministic, class-stratified split of ``range(len(y))`` into len(fractions)+1 parts.

    ``fractions`` are the sizes of the first parts (e.g. ``(0.1,)`` -> [val, rest]); the
    last part gets what is left. Unlabelled entries (``y < 0``) are split as one class.
    Each part is returned sorted, so the original order is kept within a split.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for k, f in enumerate(fractions):
            n = int(round(f * len(idx)))
            if f > 0 and len(idx) >= len(fractions) + 1:
                n = max(n, 1)  # every class shows up in every part when it can
            parts[k].append(idx[start:start + n])
            start += n
        parts[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def split_arrays(x: np.ndarray, y: np.ndarray, val: float = 0.1, test: float | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """``{train,val,test}_{x,y}`` from one labelled set: ``val`` (and ``test`` if given) fractions."""
    y = np.asarray(y, np.int64)
    if test is None:
        va, tr = stratified_split(y, (val,), seed)
        return {"train_x": x[tr], "train_y": y[tr], "val_x": x[va], "val_y": y[va]}
    te, va, tr = stratified_split(y, (test, val), seed)
    return {"train_x": x[tr], "train_y": y[tr], "val_x": x[va], "val_y": y[va],
            "test_x": x[te], "test_y": y[te]}
