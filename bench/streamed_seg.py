"""The streamed segmentation path at real sizes: images per second and the share of each step spent waiting
for data, with 0, 1 and 2 DataLoader workers.

    python bench/streamed_seg.py                       # 16 GTA5 images at 1914x1052 (and 1280x720), 16 Cityscapes
                                                       # at 2048x1024, 512x512 crops, batch 2 + 2, 2 epochs
    python bench/streamed_seg.py --workers 0,2 --method dacs --crop 512x512 --epochs 2

Writes GTA5 and Cityscapes trees in their real layouts and sizes (the flat-region pictures of
tests/realdata.py), then trains each setting with ``dalab train`` (fp32 on the CPU, SegNet) and
reads its summary: training images per second (source + target), the seconds the steps waited for
their batches (``data_wait_seconds``) and their share of the training time. Also times one pass of
the source loader alone (decode, resize to the base size, random scale, crop, flip). Run it on an
otherwise idle machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def write_trees(root: Path, n: int) -> tuple[Path, Path]:
    """GTA5 (``n`` pairs, a quarter at 1280x720) and Cityscapes (``n`` train images without labels, 4 val)."""
    import realdata as rd
    from PIL import Image

    gta = root / "GTA5"
    for d in ("images", "labels"):
        (gta / d).mkdir(parents=True, exist_ok=True)
    for k in range(1, n + 1):
        h, w = rd.GTA5_SMALL_HW if k % 4 == 0 else rd.GTA5_FULL
        rd.save_png(rd.picture(h, w, k % 16), gta / "images" / f"{k:05d}.png")
        rd.save_palette_label(rd.layout(h, w, k), gta / "labels" / f"{k:05d}.png")
    city = root / "cityscapes"
    h, w = rd.CITYSCAPES_HW
    for split, count in (("train", n), ("val", 4)):
        d = city / "leftImg8bit" / split / "bench"
        d.mkdir(parents=True, exist_ok=True)
        if split == "val":
            (city / "gtFine" / split / "bench").mkdir(parents=True, exist_ok=True)
        for k in range(count):
            stem = rd.cityscapes_stem("bench", k)
            rd.save_png(rd.picture(h, w, k % 16), d / f"{stem}_leftImg8bit.png")
            if split == "val":
                Image.fromarray(rd.layout(h, w, k)).save(city / "gtFine" / split / "bench" / f"{stem}_gtFine_labelIds.png")
    return gta, city


def loader_pass(gta: Path, crop, workers: int, data_dir: Path) -> float:
    """Images per second of one pass of the source training loader alone."""
    from dalab.data import load_domain

    split = load_domain(f"gta5:{gta}", data_dir, progress=False)["train"]
    loader = split.loader(2, True, workers=workers, crop=crop, seed=0)
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="GTA5 pairs and Cityscapes training images")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--method", default="source-only")
    ap.add_argument("--crop", default="512x512")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--keep", default=None, help="a folder to write the trees and runs into (default: temporary)")
    args = ap.parse_args()
    crop = [int(v) for v in args.crop.split("x")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dalab-bench-seg-"))
    t0 = time.perf_counter()
    gta, city = write_trees(root / "data", args.images)
    print(f"trees written in {time.perf_counter() - t0:.1f} s under {root / 'data'}")
    import torch

    import dalab

    print(f"dalab {dalab.__version__}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cpus; "
          f"method {args.method}, {args.crop} crops, batch {args.batch_size} + {args.batch_size}, "
          f"{args.epochs} epochs")
    print("| workers | loader alone (img/s) | training (img/s) | data wait | share of training time |")
    print("|---|---|---|---|---|")
    rows = []
    for w in [int(v) for v in args.workers.split(",")]:
        cache = root / f"cache-w{w}"
        rate = loader_pass(gta, crop, w, cache)
        out = root / f"run-w{w}"
        cmd = [sys.executable, "-m", "dalab", "train", "--method", args.method, "--source", f"gta5:{gta}",
               "--target", f"cityscapes:{city}", "--crop", args.crop, "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--workers", str(w), "--precision", "fp32", "--device", "cpu",
               "--quiet", "--json", "--overwrite", "--out", str(out), "--data-dir", str(cache)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        s = json.loads(r.stdout)
        imgs = s["steps_per_epoch"] * s["epochs_done"] * s["images_per_step"]
        row = {"workers": w, "loader_img_s": rate, "train_img_s": imgs / s["train_seconds"],
               "wait_s": s["data_wait_seconds"], "share": s["data_wait_share"], "train_s": s["train_seconds"]}
        rows.append(row)
        print(f"| {w} | {rate:.1f} | {row['train_img_s']:.2f} | {row['wait_s']:.1f} s of {row['train_s']:.1f} s | "
              f"{100 * row['share']:.0f} % |", flush=True)
    (root / "streamed_seg.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
