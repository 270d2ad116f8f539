"""The trainer's cost beyond the training step, side by side in one process.

    python bench/epoch_overhead.py                      # one epoch (781 steps) of Ganin's DANN, fp32, twice
    python bench/epoch_overhead.py --steps 200 --rounds 3
    python bench/epoch_overhead.py --profile 25         # + cProfile of one Trainer.fit, top 25 by own time
    python bench/epoch_overhead.py --ops                # only the small operations below, 200 calls each

Both sides train DANN on Ganin's network (no batch norm, ``(x - 0.5) / 0.5``, no EMA, fp32 and
the memory format given by ``--channels-last``), 64 + 64 images per step, on the same images:

- ``step loop``: the floor. The batches are sliced before the clock starts; each step sets the
  learning rate, computes ``DANN().loss``, zeroes the gradients, runs backward and the optimiser
  (SGD with the Trainer's settings: fused where this PyTorch has it).
- ``Trainer``: what ``dalab train --method dann --no-batch-norm --input-norm none --ema-decay 0
  --precision fp32 --epochs 1`` runs (the CLI's progress bar off unless ``--bar``), on the same
  number of steps. ``train`` is its ``train_seconds`` (the step loop with batch slicing, schedules,
  metrics and checks); ``wall`` adds loading the data, building, the evaluation and the checkpoint.

The sides alternate for ``--rounds`` rounds (a load change on a shared machine hits both) and the
fastest round of each is printed, with the ratio trainer/step loop.

``--ops`` times, interleaved call by call, the small operations that cost most on a loaded
machine: gathering 64 training images by advanced indexing (``x[idx]``) against ``take_rows``
(the trainer's), the for-loop SGD step of Ganin's network against the fused one, and the weight
EMA's ``_foreach_lerp_`` with 2 threads against 1 thread. It prints the median and mean of each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

import torch

from dalab.data import load_domain
from dalab.methods import Batch, make_method
from dalab.models.nets import DANNNet
from dalab.training import TrainConfig, Trainer, ganin_lr


def step_loop(xs, ys, xt, steps: int, batch: int, channels_last: bool, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = DANNNet(batch_norm=False, input_norm="none")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = make_method("dann")
    try:  # the Trainer's optimiser settings (fused where available), so the loop is its floor
        from dalab.training.fastpath import optimizer_kwargs
        fused = optimizer_kwargs("sgd", torch.device("cpu"))
    except ImportError:  # a dalab from before fastpath.py
        fused = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **fused)
    g = torch.Generator().manual_seed(seed)
    ps, pt = torch.randperm(len(xs), generator=g), torch.randperm(len(xt), generator=g)
    batches = [(xs[ps[i * batch:(i + 1) * batch]], ys[ps[i * batch:(i + 1) * batch]],
                xt[pt[i * batch:(i + 1) * batch]]) for i in range(steps)]
    t0 = time.perf_counter()
    for i, (bx, by, bt) in enumerate(batches):
        opt.param_groups[0]["lr"] = ganin_lr(0.01, i / steps)
        loss, _ = method.loss(model, Batch(bx, by, bt, p=i / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_run(steps: int, batch: int, channels_last: bool, data_dir, bar: bool) -> dict:
    cfg = TrainConfig(method="dann", batch_norm=False, input_norm="none", ema_decay=0.0, precision="fp32",
                      channels_last=channels_last, epochs=1, batch_size=batch, limit_train=steps * batch,
                      data_dir=data_dir, device="cpu")
    with tempfile.TemporaryDirectory() as d:
        return Trainer(cfg, os.path.join(d, "run"), progress=bar).fit()


def small_ops(xs, calls: int = 200) -> None:
    import statistics

    from dalab.training.fastpath import take_rows

    idx = torch.randperm(len(xs))[:64]
    nets = {}
    for name, kw in (("SGD step, for-loop", {}), ("SGD step, fused", {"fused": True})):
        m = DANNNet(batch_norm=False, input_norm="none").to(memory_format=torch.channels_last)
        for q in m.parameters():
            q.grad = torch.randn_like(q)
        nets[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, **kw).step
    model = DANNNet(batch_norm=False, input_norm="none")
    ema = [q.detach().clone() for q in model.parameters()]
    src = [q.detach() for q in model.parameters()]
    threads = torch.get_num_threads()

    def lerp(n):
        def f():
            torch.set_num_threads(n)
            torch._foreach_lerp_(ema, src, 0.001)
            torch.set_num_threads(threads)
        return f
    fns = {"gather 64 images, x[idx]": lambda: xs[idx], "gather 64 images, take_rows": lambda: take_rows(xs, idx),
           **nets, f"EMA _foreach_lerp_, {threads} threads": lerp(threads), "EMA _foreach_lerp_, 1 thread": lerp(1)}
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(calls):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    for k, t in times.items():
        print(f"{k:32s} median {1e6 * statistics.median(t):9.0f} us | mean {1e6 * statistics.mean(t):9.0f} us")
    print(f"# load {os.getloadavg()[0]:.2f} after")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=781, help="steps per side (default: one epoch of 50k images)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--bar", action="store_true", help="show the Trainer's progress bar (the CLI's default)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile one Trainer run: top N")
    ap.add_argument("--ops", action="store_true", help="only time the small operations (see above)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.steps <= 0 or args.batch_size <= 0 or args.rounds <= 0:
        print("epoch_overhead.py: --steps, --batch-size and --rounds must be positive", file=sys.stderr)
        return 2
    src, tgt = load_domain("mnist", args.data_dir), load_domain("mnistm", args.data_dir)
    if args.ops:
        print(f"# torch {torch.__version__}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads; "
              f"load {os.getloadavg()[0]:.2f}")
        small_ops(src["train"].tensors("cpu")[0])
        return 0
    n = args.steps * args.batch_size
    if n > len(src["train"].y):
        print(f"epoch_overhead.py: --steps x --batch-size = {n} is more than the {len(src['train'].y)} "
              "source training images", file=sys.stderr)
        return 2
    xs, ys = src["train"].tensors("cpu", n)
    xt, _ = tgt["train"].tensors("cpu", n)
    print(f"# torch {torch.__version__}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads; load "
          f"{os.getloadavg()[0]:.2f}; {args.steps} steps of {args.batch_size}+{args.batch_size}, fp32, "
          f"{'channels_last' if args.channels_last else 'NCHW'}")
    step_loop(xs, ys, xt, 5, args.batch_size, args.channels_last)  # warm-up
    loops, runs = [], []
    for r in range(args.rounds):
        loops.append(step_loop(xs, ys, xt, args.steps, args.batch_size, args.channels_last))
        runs.append(trainer_run(args.steps, args.batch_size, args.channels_last, args.data_dir, args.bar))
        print(f"round {r + 1}: step loop {loops[-1]:.2f} s | Trainer train {runs[-1]['train_seconds']:.2f} s, "
              f"wall {runs[-1]['wall_seconds']:.2f} s | load {os.getloadavg()[0]:.2f}")
    loop = min(loops)
    best = min(runs, key=lambda s: s["wall_seconds"])
    train = min(s["train_seconds"] for s in runs)
    print(f"step loop {loop:.2f} s ({1000 * loop / args.steps:.1f} ms/step) | Trainer train {train:.2f} s "
          f"({1000 * train / args.steps:.1f} ms/step, x{train / loop:.3f} the step loop) | wall {best['wall_seconds']:.2f} s "
          f"(outside the step loop: {best['wall_seconds'] - best['train_seconds']:.2f} s)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        trainer_run(args.steps, args.batch_size, args.channels_last, args.data_dir, args.bar)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile)
        print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
