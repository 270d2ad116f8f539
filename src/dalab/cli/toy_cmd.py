"""``dalab toy moons``: the two-moons picture of the DANN paper, in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

from ..errors import DalabError
from .common import HelpFormatter, finite_float, nonneg_float, nonneg_int, positive_float, positive_int

EPILOG = """examples:
  dalab toy moons --out docs                 # docs/moons.png and docs/moons.json
  dalab toy moons --out runs/moons --angle 50 --seed 3

Source: two interleaving moons (scikit-learn), labelled. Target: the same, rotated by
--angle degrees about the source centre, unlabelled. A 15-unit sigmoid network is
trained without and with the gradient reversal layer; the figure shows both decision
boundaries and a PCA of both hidden layers (as in Ganin et al., JMLR 2016, Fig. 2).
"""


def add_parser(sub) -> None:
    from ..toy.moons import MoonsConfig

    d = MoonsConfig()
    p = sub.add_parser("toy", help="toy problems that run in seconds (two moons)", formatter_class=HelpFormatter,
                       description="Toy problems.", epilog=EPILOG)
    tsub = p.add_subparsers(dest="toy_cmd", required=True, metavar="{moons}")
    m = tsub.add_parser("moons", help="source-only vs DANN on two moons; writes OUT/moons.png and OUT/moons.json",
                        formatter_class=HelpFormatter, epilog=EPILOG,
                        description="Source-only vs DANN on two moons; writes OUT/moons.png and OUT/moons.json.")
    m.add_argument("--out", required=True, help="folder for moons.png and moons.json")
    m.add_argument("--seed", type=nonneg_int, default=d.seed)
    m.add_argument("--n", type=positive_int, default=d.n, help="points per domain")
    m.add_argument("--noise", type=nonneg_float, default=d.noise, help="make_moons noise")
    m.add_argument("--angle", type=finite_float, default=d.angle, help="target rotation (degrees)")
    m.add_argument("--hidden", type=positive_int, default=d.hidden, help="hidden units")
    m.add_argument("--steps", type=positive_int, default=d.steps, help="full-batch Adam steps per model")
    m.add_argument("--lr", type=positive_float, default=d.lr)
    m.add_argument("--lambda-max", type=nonneg_float, default=d.lambda_max, help="GRL strength (Ganin ramp)")
    m.set_defaults(func=run_moons_cmd)


def run_moons_cmd(args) -> int:
    from ..data.io import atomic_write_json
    from ..reports.moons import plot_moons
    from ..toy.moons import MoonsConfig, run_moons

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DalabError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DalabError(f"--out {out}: cannot create it ({e.strerror})") from None
    cfg = MoonsConfig(n=args.n, noise=args.noise, angle=args.angle, hidden=args.hidden, steps=args.steps,
                      lr=args.lr, lambda_max=args.lambda_max, seed=args.seed)
    res = run_moons(cfg)
    try:
        plot_moons(res, out / "moons.png")
        atomic_write_json(out / "moons.json", res.summary())
    except OSError as e:
        raise DalabError(f"--out {out}: cannot write there ({e.strerror})") from None
    for m in res.models:
        print(f"{m.name:9s} source acc {100 * m.source_acc:6.2f}%   target acc {100 * m.target_acc:6.2f}%   "
              f"domains told apart on hidden features (RBF SVM, 5-fold) {100 * m.domain_acc:6.2f}%")
    print(f"wrote {out / 'moons.png'} and {out / 'moons.json'} ({res.seconds:.1f} s)")
    return 0
