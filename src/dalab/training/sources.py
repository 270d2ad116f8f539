"""A run's data as one object: the training batches of both domains and the splits it scores.

The trainer asks a :class:`DataSource` for each step's batch, for the scored splits and for a few
unlabelled images per domain (batch-norm calibration), and saves its state in checkpoints; it
never asks where the images live. Two implementations:

- :class:`ResidentSource`: whole datasets as uint8 tensors on the device (the fast path). An epoch
  draws one permutation per domain from the source's generator, and each batch is sliced out of
  the resident tensors with one index op, so there is no DataLoader and no per-sample Python.
- :class:`StreamedSource`: datasets read from files by DataLoaders with workers (one per domain,
  endless across epochs), for images that do not fit in memory or need per-image augmentation.

Under ``torch.distributed`` each process gets its share of every global batch (resident: a slice
of the batch; streamed: a sampler shard); scored splits read from files are sharded too, and
their counts summed (``reduce``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import DalabError
from .fastpath import take_rows

STREAM_CALIBRATION = 100  # AdaBN images per domain when the domains are read from files


@dataclass
class EvalSet:
    """One scored split: ``batches()`` yields (images, labels) batches; ``reduce`` sums counts over
    processes (None: every process scores the whole split)."""

    batches: Callable[[], Iterator]
    size: int
    reduce: Callable | None = None

    def __len__(self) -> int:
        return self.size


@dataclass
class TrainBatch:
    xs: torch.Tensor | None
    ys: torch.Tensor | None
    xt: torch.Tensor | None
    yt: torch.Tensor | None
    idx_t: torch.Tensor | None = None


@dataclass
class DataSource:
    """What both implementations share: the two domains (names, descriptions, classes) and facts
    for the run's summary."""

    source: object                 # a dalab Domain (its splits may be empty)
    target: object
    facts: dict = field(default_factory=dict)   # recorded in summary.json (e.g. data checks)
    check_log: str | None = None                # the files a data check skipped or repaired, one per line

    streamed: bool = False

    @property
    def num_classes(self) -> int:
        return int(getattr(self.source, "num_classes", 10))

    @property
    def classes(self):
        return getattr(self.source, "classes", None)

    # the interface, per implementation
    def n_train(self, domain: str) -> int: ...
    def epoch_batches(self, epoch: int, steps: int) -> Iterator[TrainBatch]: ...
    def eval_sets(self) -> dict[str, EvalSet]: ...
    def calibration_images(self, n: int, seed: int) -> dict[str, torch.Tensor]: ...
    def sample(self, n: int) -> dict[str, torch.Tensor]: ...
    def target_images(self) -> torch.Tensor | None: ...
    def input_shape(self) -> list[int] | None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def index_stream(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` indices in [0, n): concatenated random permutations (each image once per pass)."""
    reps = math.ceil(count / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:count]


@dataclass
class ResidentSource(DataSource):
    """Tensors on the device: ``xs``/``ys`` (source training set), ``xt``/``yt_train`` (target
    training set; ``yt_train`` read only by the oracle), ``evals`` {split: (x, y) or None}.
    ``batch`` is the global batch per domain, this process's share the ``rank``-th slice of it."""

    xs: torch.Tensor | None = None
    ys: torch.Tensor | None = None
    xt: torch.Tensor | None = None
    yt_train: torch.Tensor | None = None
    evals: dict = field(default_factory=dict)
    batch: int = 64
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    uses_target_labels: bool = False
    eval_batch: int = 2048
    rcs: object = None   # a RareClassSampler: source images drawn by class instead of a permutation

    def __post_init__(self):
        self.gen = torch.Generator().manual_seed(self.seed)

    def n_train(self, domain: str) -> int:
        x = self.xs if domain == "source" else self.xt
        return 0 if x is None else len(x)

    def input_shape(self) -> list[int] | None:
        x = self.xs if self.xs is not None else self.xt
        return None if x is None else [int(s) for s in x.shape[1:]]

    def epoch_batches(self, epoch: int, steps: int) -> Iterator[TrainBatch]:
        """One permutation per domain drawn from the generator now (every image once per pass),
        each batch sliced out of the resident tensors with one index op."""
        B = self.batch
        b, off = B // self.world_size, self.rank * (B // self.world_size)
        dev = self.xs.device if self.xs is not None else self.xt.device
        if self.xs is None:
            ps = None
        elif self.rcs is not None:  # rare-class sampling: a class, then an image holding it, per draw
            ps = self.rcs.draw(steps * B, self.gen)[0].to(dev)
        else:
            ps = index_stream(len(self.xs), steps * B, self.gen).to(dev)
        pt = index_stream(len(self.xt), steps * B, self.gen).to(dev) if self.xt is not None else None
        labels_t = self.uses_target_labels
        for i in range(steps):
            sl = slice(i * B + off, i * B + off + b)
            i_s, i_t = (ps[sl] if ps is not None else None), (pt[sl] if pt is not None else None)
            # take_rows: x[idx] without a multi-threaded element-wise gather (fastpath.py)
            yield TrainBatch(take_rows(self.xs, i_s) if i_s is not None else None,
                             take_rows(self.ys, i_s) if i_s is not None else None,
                             take_rows(self.xt, i_t) if i_t is not None else None,
                             take_rows(self.yt_train, i_t) if i_t is not None and labels_t else None,
                             i_t)

    def eval_sets(self) -> dict[str, EvalSet]:
        out = {}
        for split, pair in self.evals.items():
            if pair is None:  # in-memory data may come without some evaluation sets
                continue
            x, y = pair
            bs = self.eval_batch
            out[split] = EvalSet(lambda x=x, y=y, bs=bs: ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)),
                                 len(x))
        return out

    def calibration_images(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        """A fixed random subset of ``n`` training images per domain (no labels)."""
        out = {}
        for dom, x in (("source", self.xs), ("target", self.xt)):
            if n and x is not None and len(x):
                idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)
                out[dom] = x[idx]
        return out

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        return {k: v for k, v in (("xs", self.xs), ("ys", self.ys), ("xt", self.xt), ("yt_train", self.yt_train))
                if v is not None}

    def target_images(self) -> torch.Tensor | None:
        return self.xt

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


@dataclass
class StreamedSource(DataSource):
    """DataLoaders over files: ``loaders`` {"source"/"target": a training loader}, ``evals``
    {split: an evaluation loader}, ``reduce`` the sum over processes of scored counts."""

    loaders: dict = field(default_factory=dict)
    evals: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    reduce: Callable | None = None
    crop: list | None = None
    image_size: int | None = None   # photos: square crops of this side
    streamed: bool = True

    def __post_init__(self):
        self._its: dict | None = None
        self.wait_seconds = 0.0  # time the training loop spent waiting for batches

    def n_train(self, domain: str) -> int:
        loader = self.loaders.get(domain)
        return 0 if loader is None else len(loader.dataset)

    def input_shape(self) -> list[int] | None:  # a model trained on crops takes any size; the crop is what it saw
        if self.image_size:
            return [3, self.image_size, self.image_size]
        return [3, *self.crop] if self.crop else None

    def timing(self) -> dict:
        return {"data_wait_seconds": round(self.wait_seconds, 3)}

    def read_failures(self) -> dict:
        """Files that could not be decoded in the middle of the run (a loader that counts them, e.g. photos):
        {domain: {"files": n, "items_substituted": n}}, only where there were any."""
        out = {}
        for dom, loader in self.loaders.items():
            failed = getattr(loader, "decode_failures", None)
            if failed:
                out[dom] = {"files": len(failed), "items_substituted": int(getattr(loader, "substituted", 0))}
        return out

    def epoch_batches(self, epoch: int, steps: int) -> Iterator[TrainBatch]:
        """The next batch of each domain's loader: one endless iterator per domain for the whole run,
        so a target pass that outlasts a source epoch carries on where it was."""
        if self._its is None:  # a resumed loader continues from the position its state was loaded with
            self._its = {k: loader.forever() for k, loader in self.loaders.items()}
        dev = self.device
        for _ in range(steps):
            t0 = time.perf_counter()
            xs = ys = xt = yt = None
            if "source" in self._its:
                xs, ys = (v.to(dev, non_blocking=True) for v in next(self._its["source"]))
            if "target" in self._its:
                xt, yt = (v.to(dev, non_blocking=True) for v in next(self._its["target"]))
            self.wait_seconds += time.perf_counter() - t0  # the step waited this long for its data
            yield TrainBatch(xs, ys, xt, yt, None)

    def eval_sets(self) -> dict[str, EvalSet]:
        return {split: EvalSet(lambda loader=loader: iter(loader), len(loader.dataset), self.reduce)
                for split, loader in self.evals.items() if loader is not None}

    def calibration_images(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        """At most :data:`STREAM_CALIBRATION` training crops per domain, kept in memory."""
        out = {}
        for dom, loader in self.loaders.items():
            ds = loader.dataset
            take = min(n, STREAM_CALIBRATION, len(ds))
            if take:
                idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:take]
                out[dom] = torch.stack([ds[(int(i), 0)][0] for i in idx]).to(self.device)  # (index, epoch 0)
        return out

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """The first ``n`` training crops (and labels) of each domain, as in-memory tensors under the
        keys of resident data, for measurements that index rows."""
        out = {}
        for dom, (xk, yk) in (("source", ("xs", "ys")), ("target", ("xt", "yt_train"))):
            loader = self.loaders.get(dom)
            if loader is None:
                continue
            xs, ys = [], []
            for x, y in loader:
                xs.append(x)
                ys.append(y)
                if sum(len(v) for v in xs) >= n:
                    break
            out[xk], out[yk] = torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)
        return out

    def target_images(self) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict:
        """Each training loader's position (epoch and batches taken in it), to resume the exact stream."""
        return {k: loader.state_dict() for k, loader in self.loaders.items()}

    def load_state_dict(self, state: dict) -> None:
        if "gen" in state:  # a checkpoint of dalab < 0.9 recorded no position: start the epoch it stopped at
            return
        for k, st in state.items():
            self.loaders[k].load_state_dict(st)


def refuse_whole_target_set(method) -> None:
    """A method that relabels the whole target training set every epoch needs it in memory."""
    if getattr(method, "needs_target_set", False):
        raise DalabError(f"method {method.name!r} relabels the whole target training set every epoch, "
                         "which a dataset read from files does not hold in memory")
