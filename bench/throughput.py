"""Training/inference throughput of dalab vs the naive baseline, side by side in one process.

    python bench/throughput.py                 # CPU (and CUDA when present), 400 steps each
    python bench/throughput.py --steps 200 --full-run   # + a default `dalab train` run: wall time, peak RSS
    python bench/throughput.py --prepare       # + `dalab data prepare` from scratch
    python bench/throughput.py --devices cuda --variants   # + dalab in fp32/bf16 x NCHW/channels_last

Prints images/second (source + target images per second) for both and the ratio, for
each network (``--networks``): both sides train the same network. The data and the number
of steps are the same for both sides. Run it on an otherwise idle
machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive import train_naive  # noqa: E402

from dalab.data import load_domain  # noqa: E402
from dalab.models.inference import predict_logits  # noqa: E402
from dalab.training import TrainConfig, Trainer, load_model  # noqa: E402


# The network both sides train: dalab's default (batch norm, instance input norm) or Ganin's
# exact net. dalab's side also keeps its other defaults of that setting (weight EMA for the
# default; none for Ganin's), so it never does less work than the naive loop.
NETWORKS = {
    "default": ({"batch_norm": True, "input_norm": "instance"}, {}),
    "ganin": ({"batch_norm": False, "input_norm": "none"},
              {"batch_norm": False, "input_norm": "none", "ema_decay": 0.0}),
}


def img_s(summary: dict) -> float:
    """Source + target images per second of training in a run summary."""
    return summary["steps_per_epoch"] * summary["epochs"] * summary["images_per_step"] / summary["train_seconds"]


def bench_device(device: str, steps: int, batch: int, data_dir, network: str = "default",
                 variants: bool = False) -> dict:
    src, tgt = load_domain("mnist", data_dir), load_domain("mnistm", data_dir)
    n = steps * batch
    sx, sy, tx = src["train"].x[:n], src["train"].y[:n], tgt["train"].x[:n]
    net, overrides = NETWORKS[network]
    # warm-up both paths briefly (allocator, kernels), then measure
    train_naive(sx, sy, tx, steps=5, batch_size=batch, device=device, net=net)
    t_naive = train_naive(sx, sy, tx, steps=steps, batch_size=batch, device=device, net=net)
    res = {"device": device, "network": network, "steps": steps, "batch_per_domain": batch,
           "naive_img_s": 2 * batch * steps / t_naive, "naive_seconds": t_naive}
    # the same number of steps on dalab's side: whole epochs over the (at most 50k) images sliced above
    epochs = math.ceil(steps / (len(sx) // batch))
    cfg = TrainConfig(method="dann", epochs=epochs, batch_size=batch, limit_train=n, limit_eval=1000,
                      device=device, data_dir=data_dir, **overrides)
    def short_run(settings: dict, steps: int, out=None) -> None:  # warm-up / a model to load
        Trainer(TrainConfig(**{**settings, "limit_train": steps * batch, "epochs": 1}), out, progress=False).fit()

    short_run(cfg.to_dict(), 5)
    s = Trainer(cfg, progress=False).fit()
    res.update({"dalab_img_s": img_s(s), "dalab_seconds": s["train_seconds"],
                "dalab_precision": s["precision"]})
    res["speedup"] = res["dalab_img_s"] / res["naive_img_s"]
    if variants:  # dalab's side alone with each precision / memory-format combination, same steps
        res["variants"] = []
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                vcfg = {**cfg.to_dict(), "precision": precision, "channels_last": channels_last}
                short_run(vcfg, 5)  # warm-up in this setting: cuDNN picks kernels per shape and memory format
                v = Trainer(TrainConfig(**vcfg), progress=False).fit()
                res["variants"].append({"precision": precision, "channels_last": channels_last,
                                        "img_s": img_s(v)})
    # inference throughput (what `dalab evaluate` does)
    with tempfile.TemporaryDirectory() as d:
        short_run(cfg.to_dict(), 10, d + "/r")
        model, _ = load_model(d + "/r/model.pt", device)
        x, _ = tgt["test"].tensors(device)
        predict_logits(model, x[:2048], domain="target")
        t0 = time.perf_counter()
        predict_logits(model, x, domain="target")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        res["inference_img_s"] = len(x) / (time.perf_counter() - t0)
    return res


def run_cmd(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
    return {"cmd": " ".join(cmd), "rc": r.returncode, "wall_seconds": wall,
            "peak_rss_mb": max(peak, before) / 1024, "stdout_tail": r.stdout.strip().splitlines()[-1:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--devices", default=None, help="comma list; default cpu (+cuda if available)")
    ap.add_argument("--networks", default="default,ganin",
                    help="comma list of networks both sides train: default (dalab's), ganin (Ganin's exact net)")
    ap.add_argument("--variants", action="store_true",
                    help="also time dalab's side in fp32/bf16 x NCHW/channels_last (same steps)")
    ap.add_argument("--full-run", action="store_true", help="also time a default `dalab train --method dann`")
    ap.add_argument("--prepare", action="store_true", help="also time `dalab data prepare` from scratch")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {"host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
           "results": []}
    print(f"# {out['host']}")
    for dev in devices:
        for network in args.networks.split(","):
            r = bench_device(dev, args.steps, args.batch_size, args.data_dir, network, args.variants)
            out["results"].append(r)
            print(f"{dev:5s} {network:8s} naive {r['naive_img_s']:8.0f} img/s | dalab {r['dalab_img_s']:8.0f} img/s "
                  f"({r['dalab_precision']}) | speedup x{r['speedup']:.2f} | inference {r['inference_img_s']:.0f} img/s"
                  f" | batch {args.batch_size}+{args.batch_size}")
            for v in r.get("variants", []):
                print(f"      {network:8s} dalab {v['precision']:4s} {'channels_last' if v['channels_last'] else 'NCHW':13s} "
                      f"{v['img_s']:8.0f} img/s")
    dalab = [sys.executable, "-m", "dalab"]
    if args.prepare:
        with tempfile.TemporaryDirectory() as d:
            r = run_cmd(dalab + ["data", "prepare", "--data-dir", d])
        out["prepare"] = r
        print(f"data prepare from scratch: {r['wall_seconds']:.1f} s (rc {r['rc']})")
    if args.full_run:
        with tempfile.TemporaryDirectory() as d:
            cmd = dalab + ["train", "--method", "dann", "--out", d + "/run", "--quiet"]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            r = run_cmd(cmd)
            r["summary"] = json.loads((Path(d) / "run" / "summary.json").read_text()) if r["rc"] == 0 else None
        out["default_run"] = r
        s = r["summary"] or {}
        print(f"default `dalab train --method dann`: wall {r['wall_seconds']:.1f} s, training "
              f"{s.get('train_seconds', float('nan')):.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"target acc {s.get('target_test_acc')}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
