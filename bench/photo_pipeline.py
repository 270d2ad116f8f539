"""Images read from files: a built-in pair written out as PNG folders and trained back through ``folder:``,
beside the in-memory path, and dalab's photo loader beside torchvision's ImageFolder + DataLoader.

    python bench/photo_pipeline.py                      # all three parts
    python bench/photo_pipeline.py --parts loaders      # only the loader comparison (a few minutes)
    python bench/photo_pipeline.py --epochs 3 --parts roundtrip

1. **Round trip** (``roundtrip``): ``dalab data export`` writes MNIST and MNIST-M (rebuilt) as PNG class
   folders; DANN trains on the in-memory domains and on ``folder:`` streamed from the files (``--stream
   --image-size 28 --photo-transform resize``: the same 28x28 view, no augmentation), same settings and
   seed; the table gives both target test accuracies and training times.
2. **Loaders** (``loaders``): one pass over the same files with the same transforms, images per second:
   dalab's photo loader (``PhotoSplit.loader``) and ``torchvision.datasets.ImageFolder`` with a
   ``DataLoader`` (``transforms.Resize(256), RandomResizedCrop(224), RandomHorizontalFlip()`` on photos;
   ``Resize(28), CenterCrop(28)`` on the exported digits), with 0 and 2 workers. Photos: synthetic
   640x480 JPEGs in 4 class folders.

Needs torchvision for part 2. Run it on an otherwise idle machine: it measures wall time.
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


def dalab(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dalab", *map(str, args)], capture_output=True, text=True)


def roundtrip(root: Path, epochs: int, workers: int) -> dict:
    for dom in ("mnist", "mnistm"):
        if not (root / dom).exists():
            t0 = time.perf_counter()
            r = dalab("data", "export", dom, "--out", root / dom)
            if r.returncode:
                raise SystemExit(r.stderr)
            print(f"exported {dom}: {r.stdout.strip()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    common = ["--method", "dann", "--epochs", epochs, "--seed", 0, "--precision", "fp32", "--device", "cpu",
              "--quiet", "--json", "--overwrite"]
    runs = {"in memory": ["--source", "mnist", "--target", "mnistm"],
            "folder:, streamed": ["--source", f"folder:{root / 'mnist'}", "--target", f"folder:{root / 'mnistm'}",
                                  "--stream", "--image-size", 28, "--photo-transform", "resize", "--workers", workers]}
    out = {}
    print("| path | target test acc | source test acc | train s | data wait |")
    print("|---|---|---|---|---|")
    for name, extra in runs.items():
        r = dalab("train", *common, *extra, "--out", root / f"run-{name.split()[0].strip(':,')}")
        if r.returncode:
            raise SystemExit(r.stderr)
        s = json.loads(r.stdout)
        out[name] = {k: s.get(k) for k in ("target_test_acc", "source_test_acc", "train_seconds", "data_wait_seconds",
                                           "n_source_train", "n_target_train")}
        wait = "" if s.get("data_wait_seconds") is None else f"{s['data_wait_seconds']:.0f} s"
        print(f"| {name} | {100 * s['target_test_acc']:.2f} % | {100 * s['source_test_acc']:.2f} % | "
              f"{s['train_seconds']:.0f} | {wait} |", flush=True)
    return out


def write_photos(root: Path, per_class: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 40, 40), (40, 180, 60), (50, 60, 220), (220, 200, 40)]):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (np.array(colour) + rng.integers(-40, 40, size=(480, 640, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{i:04d}.jpg", quality=90)
    return root


def loader_rates(folder: Path, size: int, standard: bool, workers: int, batch: int = 64) -> tuple[float, float]:
    """(dalab images/s, torchvision ImageFolder images/s) over one pass of ``folder``'s files."""
    import torch
    from torchvision import datasets, transforms

    from dalab.data import load_domain

    split = load_domain(f"folder:{folder}", stream=True, image_size=size, progress=False)["train"]
    opts = {} if standard else {"resize": size, "scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip": False}
    loader = split.loader(batch, True, workers=workers, image_size=size, seed=0, **opts)
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    ours = n / (time.perf_counter() - t0)
    tf = (transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.RandomResizedCrop(size),
                              transforms.RandomHorizontalFlip(), transforms.PILToTensor()]) if standard else
          transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]))
    files = set(map(str, split.files))
    ds = datasets.ImageFolder(str(folder if not (folder / "train").is_dir() else folder / "train"), transform=tf,
                              is_valid_file=lambda p: p in files)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     persistent_workers=workers > 0)
    t0, n = time.perf_counter(), 0
    for x, _ in dl:
        n += len(x)
    return ours, n / (time.perf_counter() - t0)


def loaders(root: Path, per_class: int) -> dict:
    photos = write_photos(root / "photos", per_class) if not (root / "photos").exists() else root / "photos"
    if not (root / "mnistm").exists():
        r = dalab("data", "export", "mnistm", "--out", root / "mnistm")
        if r.returncode:
            raise SystemExit(r.stderr)
    out = {}
    print("| files | transforms | workers | dalab (img/s) | ImageFolder + DataLoader (img/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for label, folder, size, standard in ((f"{4 * per_class} JPEGs, 640x480", photos, 224, True),
                                          ("MNIST-M train, 50,000 PNGs, 28x28", root / "mnistm", 28, False)):
        for w in (0, 2):
            ours, theirs = loader_rates(folder, size, standard, w)
            out[f"{label}, workers {w}"] = {"dalab": ours, "imagefolder": theirs}
            what = "resize 256, random resized crop 224, flip" if standard else "resize 28, centre crop 28"
            print(f"| {label} | {what} | {w} | {ours:.0f} | {theirs:.0f} | x{ours / theirs:.2f} |", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="roundtrip,loaders")
    ap.add_argument("--epochs", type=int, default=10, help="round trip: DANN's epochs (dalab's default is 10)")
    ap.add_argument("--workers", type=int, default=2, help="round trip: DataLoader workers of the streamed run")
    ap.add_argument("--photos-per-class", type=int, default=200)
    ap.add_argument("--keep", default=None, help="a folder for the exported files and runs (default: temporary)")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dalab-bench-photos-"))
    root.mkdir(parents=True, exist_ok=True)
    import torch

    import dalab

    print(f"dalab {dalab.__version__}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cpus; "
          f"files under {root}")
    res = {}
    parts = args.parts.split(",")
    if "roundtrip" in parts:
        res["roundtrip"] = roundtrip(root, args.epochs, args.workers)
    if "loaders" in parts:
        res["loaders"] = loaders(root, args.photos_per_class)
    (root / "photo_pipeline.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
