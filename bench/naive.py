"""The reference baseline most users start from, kept in the repo for side-by-side benchmarks.

A per-sample ``torch.utils.data.Dataset`` of PIL images, two ``DataLoader`` (source,
target) with ``shuffle=True``, fp32, NCHW, and a plain Python loop with the same DANN
network, loss, optimiser and schedules as dalab. Not used by the library.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dalab.models import DANNNet, ganin_lambda


class ImageDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = Image.fromarray(self.x[i]).convert("RGB")          # what most tutorials do
        t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return t, int(self.y[i])


def train_naive(src_x, src_y, tgt_x, steps: int, batch_size: int = 64, device="cpu",
                lr0: float = 0.01, seed: int = 0, net: dict | None = None, return_model: bool = False):
    """Run ``steps`` DANN steps the naive way; returns seconds of training (and the trained model
    with ``return_model``).

    ``net``: ``DANNNet`` keyword arguments, so both sides of a benchmark train the same
    network (default: Ganin's exact net). Batch norm here is plain ``nn.BatchNorm2d``.
    """
    torch.manual_seed(seed)
    model = DANNNet(**{**(net or {}), "domain_bn": False}).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9)
    ls = DataLoader(ImageDataset(src_x, src_y), batch_size=batch_size, shuffle=True, drop_last=True)
    lt = DataLoader(ImageDataset(tgt_x, np.zeros(len(tgt_x), np.int64)), batch_size=batch_size,
                    shuffle=True, drop_last=True)
    t0 = time.perf_counter()
    it_s, it_t = iter(ls), iter(lt)
    for step in range(steps):
        try:
            xs, ys = next(it_s)
        except StopIteration:
            it_s = iter(ls)
            xs, ys = next(it_s)
        try:
            xt, _ = next(it_t)
        except StopIteration:
            it_t = iter(lt)
            xt, _ = next(it_t)
        xs, ys, xt = xs.to(device), ys.to(device), xt.to(device)
        p = step / steps
        for g in opt.param_groups:
            g["lr"] = lr0 / (1 + 10 * p) ** 0.75
        lam = ganin_lambda(p)
        fs, ft = model.features(xs), model.features(xt)
        task = F.cross_entropy(model.classify(fs), ys)
        ds, dt = model.domain_logits(fs, lam), model.domain_logits(ft, lam)
        dom = 0.5 * (F.binary_cross_entropy_with_logits(ds, torch.ones_like(ds))
                     + F.binary_cross_entropy_with_logits(dt, torch.zeros_like(dt)))
        loss = task + dom
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):  # typical per-step logging forces a sync
            raise RuntimeError("diverged")
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return (seconds, model) if return_model else seconds
