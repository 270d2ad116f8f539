"""``dalab select``: rank trained runs with a label-free validator."""

from __future__ import annotations

import math
import sys

from ..errors import DalabError
from ..evaluation.selection import select_runs
from ..evaluation.validators import VALIDATORS
from ..training import resolve_device
from .common import DEVICE_HELP, HelpFormatter, add_data_dir, positive_int, print_json

EPILOG = f"""validators (higher score = better; none reads a target label):
  source-acc  accuracy on the source validation split
  entropy     minus the mean target prediction entropy
  info-max    H(mean prediction) - mean H(prediction) on target
  bnm         nuclear norm of the target softmax matrix / N
  snd         soft neighbourhood density of target predictions
  dev         deep embedded validation (importance-weighted source-val loss)
  reverse     source-val accuracy of a classifier fit to target pseudo-labels
segmentation runs also (and not dev, reverse; source-acc is the source val mIoU):
  class-entropy           minus the mean over predicted classes of their pixels' mean entropy
  teacher-agreement       mIoU between the run's weight average and its raw weights' target maps
  augmentation-agreement  mIoU between the target maps and those of the flipped images, flipped back

examples:
  dalab select runs/ --validator snd
  dalab select runs/sweep --validator all --json > selection.json
  dalab select runs/sweep --validator bnm --by-config    # choose a configuration by its mean over seeds

Candidates are the model.pt files under RUNS_DIR. Scores use source val/train images and
the *unlabelled* target {{val,train}} images. The target test accuracy in each run's
summary.json is shown as the oracle, for judging the validators only. Known: {', '.join(VALIDATORS)}.
--by-config groups the seed folders of a benchmark (OUT/<entry>/seed<k>) into configurations,
averages each validator over a configuration's seeds and chooses the configuration with the best
mean: the way to pick hyper-parameters without a target label.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("select", help="rank runs/checkpoints without target labels", epilog=EPILOG,
                       formatter_class=HelpFormatter, description="Label-free model selection.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of runs (or one model.pt)")
    p.add_argument("--validator", default="all",
                   help="a validator, a comma-separated list, or 'all' (the first one ranks)")
    p.add_argument("--target-split", choices=["val", "train"], default="val",
                   help="unlabelled target images to score on")
    p.add_argument("--limit", type=positive_int, default=2000,
                   help="images per split used for scoring (splits read from files: at most 100)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--by-config", action="store_true",
                   help="also rank configurations (OUT/<entry>/seed<k> folders grouped by entry) by their "
                        "mean score over seeds")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_data_dir(p)
    p.set_defaults(func=run_select)


def parse_validators(s: str) -> list[str]:
    names = list(VALIDATORS) if s == "all" else [v.strip() for v in s.split(",") if v.strip()]
    if not names:
        raise DalabError("--validator: give at least one validator")
    for v in names:
        if v not in VALIDATORS:
            raise DalabError(f"unknown validator {v!r} (known: {', '.join(VALIDATORS)}, all)")
    return names


def _pct(v) -> str:
    return "   n/a" if v is None or not math.isfinite(v) else f"{100 * v:6.2f}"


def run_select(args) -> int:
    validators = parse_validators(args.validator)
    res = select_runs(args.runs_dir, validators, data_dir=args.data_dir, target_split=args.target_split,
                      limit=args.limit, device=resolve_device(args.device), by_config=args.by_config)
    if args.json:
        print_json(res)
        return 0
    key = res["ranked_by"]
    if res["skipped_target_label_runs"]:
        n = len(res["skipped_target_label_runs"])
        print(f"not candidates: {n} run{'' if n == 1 else 's'} trained on target labels (oracle): "
              + ", ".join(res["skipped_target_label_runs"]))
    if any(r.get("metric") == "miou" for r in res["rows"]):
        print("segmentation runs: 'target acc' below is the target test mIoU; every pixel is a validator sample")
    print(f"ranking by {key} (higher is better; target acc = oracle, not used to rank)")
    print(f"| rank | {key:>10s} | target acc | run")
    for i, r in enumerate(res["rows"], 1):
        print(f"| {i:4d} | {r['scores'][key]:10.4f} |   {_pct(r.get('target_test_acc'))}   | {r['run']}")
    print()
    _print_report(res["report"], "run")
    if "configs" in res:
        print()
        print(f"configurations ranked by mean {key} over their seeds (target acc: mean over the same seeds)")
        print(f"| rank | {key:>10s} | runs | target acc | configuration")  # 6 decimals: close means must be told apart
        for i, g in enumerate(res["configs"], 1):
            print(f"| {i:4d} | {g['scores'][key]:10.6f} | {g['runs']:4d} |   {_pct(g['target_test_acc'])}   | "
                  f"{g['config']}")
        for w in res["config_warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print()
        _print_report(res["config_report"], "configuration")
    return 0


def _print_report(report: dict, what: str) -> None:
    print(f"| validator  | chosen {what} | target acc of choice | oracle best | Spearman rho (score vs target acc)")
    for v, j in report.items():
        rho = j["spearman"]
        print(f"| {v:10s} | {j['choice']} | {_pct(j['choice_target_acc'])} | {_pct(j['oracle_target_acc'])} | "
              f"{'n/a' if not math.isfinite(rho) else f'{rho:+.3f}'}")
