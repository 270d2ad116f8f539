"""How many ATen operator calls one training step makes, per method (CPU, torch profiler).

    python bench/ops_per_step.py                      # dann, bf16 autocast
    python bench/ops_per_step.py --methods dann,cdan,source-only --precision fp32
    python bench/ops_per_step.py --time-share        # + where the CPU time of 60 steps of 64 + 64 goes
    python bench/ops_per_step.py --conv9 --methods source-only,dann,adamatch,dirt-t,vada   # the conv9 suite's settings

A small network at a small batch is bound by the host: each operator call costs a roughly
fixed time to dispatch (and, on a GPU, to launch), whatever the batch. The count is the
difference between two runs of different length divided by the extra steps, so set-up,
evaluation and checkpointing cancel out. Tiny batches (8 + 8) keep the profile quick; the
operator count does not depend on the batch size.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from dalab.evaluation.benchmark import SUITES
from dalab.training import TrainConfig, Trainer


def conv9_settings(method: str) -> dict:
    """The digits-mnistm-conv9 suite's settings for ``method`` (its first entry of that method)."""
    for entry in SUITES["digits-mnistm-conv9"]["entries"]:
        if entry.method == method:
            return dict(entry.overrides)
    raise SystemExit(f"{method}: not in the digits-mnistm-conv9 suite")


def profiled_ops(method: str, steps: int, batch: int, precision: str, data_dir, extra: dict | None = None) -> list:
    """The profiler's ATen entries for one short training run of ``steps`` steps."""
    cfg = TrainConfig(method=method, epochs=1, batch_size=batch, limit_train=batch * steps, limit_eval=64,
                      bn_calibration=64, precision=precision, data_dir=data_dir, **(extra or {}))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        Trainer(cfg, progress=False).fit()
    return [e for e in prof.key_averages() if e.key.startswith("aten::")]


def op_counts(method: str, steps: int, precision: str, data_dir, extra: dict | None = None) -> Counter:
    return Counter({e.key: e.count for e in profiled_ops(method, steps, 8, precision, data_dir, extra)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="dann")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--top", type=int, default=8, help="most frequent operators to list")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--conv9", action="store_true", help="the digits-mnistm-conv9 suite's network and settings")
    ap.add_argument("--time-share", action="store_true",
                    help="also profile 60 steps at 64 + 64 (one thread) and print each operator's share of CPU time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for method in args.methods.split(","):
        extra = conv9_settings(method) if args.conv9 else None
        short = op_counts(method, 10, args.precision, args.data_dir, extra)
        long = op_counts(method, 30, args.precision, args.data_dir, extra)
        per = {k: (long[k] - short[k]) / 20 for k in long if long[k] != short[k]}
        top = ", ".join(f"{k.removeprefix('aten::')} {v:.0f}" for k, v in
                        sorted(per.items(), key=lambda kv: -kv[1])[:args.top])
        print(f"{method:12s} {args.precision}: {sum(per.values()):6.0f} ATen calls per step ({top})")
        if args.time_share:
            ev = profiled_ops(method, 60, 64, args.precision, args.data_dir, extra)
            total = sum(e.self_cpu_time_total for e in ev)
            for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:args.top]:
                print(f"    {100 * e.self_cpu_time_total / total:5.1f} %  {e.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
