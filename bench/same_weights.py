"""Two runs of the same command, one per version of the code: are their weights the same?

    python bench/same_weights.py RUN_A RUN_B

Compares, tensor by tensor, the ``ckpt.pt`` of two run folders (the model, its weight average and the
method's own state, such as a discriminator or a teacher) and their ``model.pt``, and prints how many
tensors are equal bit for bit and the largest absolute difference. Used to check that a refactor keeps
behaviour: train the same fixed-seed command at the commit before and at the commit after, then
compare (docs/benchmarks.md, "Same weights before and after a refactor").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def compare(a: dict, b: dict) -> tuple[int, int, float]:
    """(equal tensors, tensors, largest absolute difference) over the keys of ``a``; a missing key is unequal."""
    equal, diff = 0, 0.0
    for key, value in a.items():
        other = b.get(key)
        if not torch.is_tensor(value) or not torch.is_tensor(other) or other.shape != value.shape:
            diff = float("inf")
            continue
        equal += int(torch.equal(value, other))
        if value.numel():
            diff = max(diff, (value.double() - other.double()).abs().max().item())
    return equal, len(a), diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not (run / "ckpt.pt").is_file():
            print(f"error: {run / 'ckpt.pt'} does not exist (train with the same command in both runs)", file=sys.stderr)
            return 2
    ca, cb = _load(args.run_a / "ckpt.pt"), _load(args.run_b / "ckpt.pt")
    for part in ("model", "ema", "method"):
        if isinstance(ca.get(part), dict) and ca[part]:
            eq, n, diff = compare(ca[part], cb.get(part) or {})
            print(f"ckpt {part:7s} {eq}/{n} tensors equal, max |diff| {diff:.3g}")
    sa, sb = _load(args.run_a / "model.pt")["state_dict"], _load(args.run_b / "model.pt")["state_dict"]
    eq, n, diff = compare(sa, sb)
    print(f"model.pt       {eq}/{n} tensors equal, max |diff| {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
