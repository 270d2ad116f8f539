"""The two-moons toy of Ganin et al. (JMLR 2016, Sec. 5.1.1 and Fig. 2), in seconds on a CPU.

Source: two interleaving moons (``sklearn.datasets.make_moons``), labelled. Target: the
same distribution rotated by 35 degrees about the centre of the source points,
unlabelled. Both models are a shallow network, 2 -> 15 sigmoid hidden units -> 2 classes,
trained full-batch with Adam on the source labels:

- ``standard``: the task loss only (the "standard NN" column of the paper's figure);
- ``dann``: plus a logistic-regression domain classifier on the 15 hidden units, behind
  the gradient reversal layer (:class:`dalab.models.GradientReversal`) with Ganin's
  lambda ramp.

:func:`run_moons` returns everything the figure needs (decision maps, hidden features
projected on their first two principal components, accuracies); the figure itself is
:func:`dalab.reports.moons.plot_moons`. Target labels are used only to report accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.grl import GradientReversal, LambdaSchedule


@dataclass
class MoonsConfig:
    n: int = 300                 # points per domain (half per moon)
    noise: float = 0.1           # make_moons noise
    angle: float = 35.0          # target rotation in degrees
    hidden: int = 15             # hidden units (sigmoid)
    steps: int = 1500            # full-batch Adam steps
    lr: float = 0.02
    lambda_max: float = 1.0      # GRL strength at the end of Ganin's ramp
    gamma: float = 10.0
    seed: int = 0
    grid: int = 200              # resolution of the decision maps

    def validate(self) -> "MoonsConfig":
        from ..errors import DalabError

        if self.n < 4 or self.hidden < 1 or self.steps < 1 or self.grid < 2:
            raise DalabError("toy moons: --n must be >= 4 and --hidden, --steps positive")
        for k in ("noise", "lr", "lambda_max", "gamma", "angle"):
            v = getattr(self, k)
            if not np.isfinite(v) or (k != "angle" and v < 0) or (k == "lr" and v == 0):
                raise DalabError(f"toy moons: bad --{k.replace('_', '-')} {v}")
        return self


def rotate(x: np.ndarray, degrees: float, centre: np.ndarray | None = None) -> np.ndarray:
    """Rotate points (N, 2) counter-clockwise by ``degrees`` about ``centre`` (default: their mean)."""
    c = x.mean(0) if centre is None else np.asarray(centre)
    t = np.deg2rad(degrees)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (x - c) @ r.T + c


def make_moons_pair(n: int = 300, noise: float = 0.1, angle: float = 35.0, seed: int = 0):
    """(xs, ys, xt, yt): source moons and an independent sample rotated by ``angle`` about the source centre."""
    from sklearn.datasets import make_moons

    xs, ys = make_moons(n, noise=noise, random_state=seed)
    xt, yt = make_moons(n, noise=noise, random_state=seed + 1)
    xt = rotate(xt, angle, centre=xs.mean(0))
    return xs.astype(np.float32), ys.astype(np.int64), xt.astype(np.float32), yt.astype(np.int64)


class ShallowDANN(nn.Module):
    """x (N, 2) -> sigmoid hidden (N, H) -> class logits (N, 2); GRL -> linear domain logit (N,)."""

    def __init__(self, hidden: int = 15):
        super().__init__()
        self.hidden = nn.Linear(2, hidden)
        self.label = nn.Linear(hidden, 2)
        self.grl = GradientReversal(0.0)
        self.domain = nn.Linear(hidden, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.label(self.features(x))

    def domain_logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.domain(self.grl(f)).squeeze(-1)


def train_shallow(xs, ys, xt, adapt: bool, cfg: MoonsConfig) -> tuple[ShallowDANN, list[dict]]:
    """Full-batch training; with ``adapt`` the domain loss goes through the GRL."""
    torch.manual_seed(cfg.seed)
    model = ShallowDANN(cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    xs_t, ys_t, xt_t = map(torch.as_tensor, (xs, ys, xt))
    x_all = torch.cat([xs_t, xt_t])
    d_lab = torch.cat([torch.ones(len(xs_t)), torch.zeros(len(xt_t))])
    sched = LambdaSchedule(cfg.lambda_max, "ganin", cfg.gamma)
    history = []
    for step in range(cfg.steps):
        p = step / cfg.steps
        f = model.features(x_all)
        task = F.cross_entropy(model.label(f[:len(xs_t)]), ys_t)
        loss = task
        if adapt:
            model.grl.lambd = sched(p)
            dom = F.binary_cross_entropy_with_logits(model.domain_logits(f), d_lab)
            loss = task + dom
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, cfg.steps // 20) == 0 or step == cfg.steps - 1:
            history.append({"step": step, "task_loss": task.item(), "lambda": model.grl.lambd,
                            **({"domain_loss": dom.item()} if adapt else {})})
    return model.eval(), history


def pca2(f: np.ndarray) -> np.ndarray:
    """Project rows of ``f`` on their first two principal components (sign fixed for stable plots)."""
    c = f - f.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    v = vt[:2]
    v = v * np.sign(v[np.arange(len(v)), np.abs(v).argmax(1)])[:, None]
    out = c @ v.T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


@dataclass
class MoonsModelResult:
    name: str
    source_acc: float
    target_acc: float
    domain_acc: float            # CV accuracy of an RBF SVM telling the domains apart on hidden features
    prob: np.ndarray             # (grid, grid) P(class 1) over the plot window
    feats_2d: np.ndarray         # (2n, 2) PCA of hidden features, source rows first
    history: list[dict] = field(default_factory=list)


@dataclass
class MoonsResult:
    config: MoonsConfig
    xs: np.ndarray
    ys: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    xx: np.ndarray
    yy: np.ndarray
    models: list[MoonsModelResult]
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"config": asdict(self.config), "seconds": round(self.seconds, 2),
                "models": {m.name: {"source_acc": m.source_acc, "target_acc": m.target_acc,
                                    "hidden_domain_acc": m.domain_acc} for m in self.models}}


def _domain_separability(f: np.ndarray, n_source: int) -> float:
    """5-fold cross-validated accuracy of an RBF SVM telling source from target features
    (0.5 = indistinguishable; the proxy A-distance of the paper is 2 (2 acc - 1))."""
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    d = np.r_[np.ones(n_source), np.zeros(len(f) - n_source)]
    return float(cross_val_score(SVC(), f, d, cv=5).mean())


def run_moons(cfg: MoonsConfig | None = None) -> MoonsResult:
    import time

    cfg = (cfg or MoonsConfig()).validate()
    t0 = time.perf_counter()
    xs, ys, xt, yt = make_moons_pair(cfg.n, cfg.noise, cfg.angle, cfg.seed)
    both = np.r_[xs, xt]
    lo, hi = both.min(0) - 0.5, both.max(0) + 0.5
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], cfg.grid), np.linspace(lo[1], hi[1], cfg.grid))
    grid = torch.as_tensor(np.c_[xx.ravel(), yy.ravel()], dtype=torch.float32)
    models = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-D toy: thread start-up costs more than it saves (100x on a busy CPU)
    try:
        with torch.random.fork_rng():
            for name, adapt in (("standard", False), ("dann", True)):
                model, hist = train_shallow(xs, ys, xt, adapt, cfg)
                with torch.no_grad():
                    acc_s = float((model(torch.as_tensor(xs)).argmax(1).numpy() == ys).mean())
                    acc_t = float((model(torch.as_tensor(xt)).argmax(1).numpy() == yt).mean())
                    prob = torch.softmax(model(grid), 1)[:, 1].numpy().reshape(xx.shape)
                    f = model.features(torch.as_tensor(both)).numpy()
                models.append(MoonsModelResult(name, acc_s, acc_t, _domain_separability(f, len(xs)),
                                               prob, pca2(f), hist))
    finally:
        torch.set_num_threads(threads)
    return MoonsResult(cfg, xs, ys, xt, yt, xx, yy, models, time.perf_counter() - t0)
