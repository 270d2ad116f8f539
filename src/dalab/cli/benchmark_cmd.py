"""``dalab benchmark``: all methods, default hyper-parameters, N seeds, one table."""

from __future__ import annotations

from pathlib import Path

from ..errors import DalabError
from ..evaluation.benchmark import SUITES, collect_benchmark, run_benchmark
from .common import DEVICE_HELP, HelpFormatter, add_data_dir, positive_int, print_json, split_names
from .launch_args import LAUNCHER_EPILOG, add_launcher_args, make_launcher

EPILOG = """examples:
  dalab benchmark --suite digits-mnistm --seeds 3 --out runs/bench
  dalab benchmark --suite digits-mnistm --seeds 1 --methods dann,vada,dirt-t --epochs 2 \\
      --limit-train 20000 --out runs/bench-quick
  dalab benchmark --suite digits-pairs --seeds 1 --out runs/pairs      # six domain pairs
  dalab benchmark --suite digits-pairs --pairs uci-digits:mnist --methods source-only,dann --out runs/pairs
  dalab benchmark --suite digits-mnistm-conv9 --seeds 3 --epochs 3 --methods "adamatch,dirt-t (from adamatch)" \\
      --epochs-for "dirt-t (from adamatch)=6" --out runs/conv9-cpu-e6dt

Runs OUT/<method>/seed<k>/ (OUT/<source>-to-<target>/<method>/seed<k>/ for
digits-pairs; a finished run is reused: re-running continues a stopped
benchmark), then writes OUT/benchmark.md (the table) and OUT/benchmark.json.
Asked for more epochs (--epochs, --epochs-for), a finished run is continued from its
checkpoint (other changed settings are refused); its summary.json says so
(epochs_changed_from). A run warm-started from a continued one is not redone: move
its folder away to redo it.
A diverged/failed run is listed and the rest go on. dirt-t starts from vada's model.pt
of the same seed ("dirt-t (from adamatch)" from adamatch's). Models are the last
epoch's; no target label is used.
A finished run is reused only with the same recipe: settings, method version and method
parameters (defaults resolved). A run made by an older version of its method, or with
other defaults, is moved aside to <run>.stale-<n>/ (never deleted) and trained again;
the table marks reused runs with the dalab version that trained them.

  dalab benchmark --suite scenes --seeds 3 --out runs/scenes --launcher submitit \\
      --slurm-partition gpu --slurm-time 2:00:00 --slurm-gpus 1 --slurm-cpus 8 --slurm-parallel 12
  dalab benchmark --collect runs/scenes          # the table from what has finished, and why not the rest
  dalab benchmark --collect runs/scenes --wait   # wait for the jobs (progress bar), then the table

""" + LAUNCHER_EPILOG + """Warm-started runs (dirt-t, dann-pl) are submitted in a second wave, once the first
has finished. --no-wait submits and returns; run the same command again to submit
what is left (running jobs are not submitted twice).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="every method x seeds on a suite, then a table", epilog=EPILOG,
                       formatter_class=HelpFormatter, description="Benchmark all methods.")
    p.add_argument("--suite", default="digits-mnistm", choices=sorted(SUITES))
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1")
    p.add_argument("--out", default=None, help="benchmark folder (required unless --collect)")
    p.add_argument("--collect", default=None, metavar="OUT",
                   help="train nothing: build the table of the benchmark in OUT from the runs that have finished "
                        "and say why the others have not")
    p.add_argument("--wait", action="store_true",
                   help="with --collect: first wait for the pending and running jobs (progress bar)")
    p.add_argument("--no-wait", action="store_true",
                   help="with --launcher submitit: submit and return (then --collect)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the suite's methods")
    p.add_argument("--pairs", default=None, metavar="SRC:TGT,...",
                   help="comma-separated subset of a multi-pair suite's domain pairs, e.g. mnist:mnistm")
    p.add_argument("--epochs", type=positive_int, default=None, help="override every method's epochs")
    p.add_argument("--epochs-for", action="append", default=[], metavar="METHOD=N",
                   help="override one method's epochs (repeatable), e.g. \"dirt-t (from adamatch)=6\"; "
                        "a finished run with fewer epochs is continued from its checkpoint")
    p.add_argument("--limit-train", type=positive_int, default=None)
    p.add_argument("--limit-eval", type=positive_int, default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="independent runs in N parallel processes (each isolated; a crashed run is recorded)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the aggregated rows as JSON")
    add_data_dir(p)
    add_launcher_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    log = (lambda *_: None) if args.json else print
    if args.collect is not None:
        if args.out is not None:
            raise DalabError("--collect OUT takes the benchmark folder itself: leave out --out")
        if args.no_wait:
            raise DalabError("--no-wait is for submitting; --collect --wait waits, --collect alone does not")
        res = collect_benchmark(args.collect, wait=args.wait, progress=not args.quiet, log=log)
        _show(args, res)
        return 0
    if args.out is None:
        raise DalabError("--out is required (or --collect OUT)")
    if args.wait:
        raise DalabError("--wait is for --collect (a benchmark waits for its runs unless --no-wait)")
    if args.launcher == "submitit" and args.jobs > 1:
        raise DalabError("--jobs is for --launcher local; with submitit, --slurm-parallel N runs N at once")
    if args.no_wait and args.launcher != "submitit":
        raise DalabError("--no-wait needs --launcher submitit")
    methods = split_names(args.methods) if args.methods else None
    pairs = None
    if args.pairs:
        pairs = []
        for item in (x.strip() for x in args.pairs.split(",") if x.strip()):
            src, sep, tgt = item.partition(":")
            if not sep or not src or not tgt:
                raise DalabError(f"--pairs: expected SOURCE:TARGET, got {item!r}")
            pairs.append((src, tgt))
    epochs_for: dict[str, int] = {}
    for item in args.epochs_for:
        name, sep, n = item.rpartition("=")
        name = name.strip()
        try:
            value = int(n) if n.strip().isascii() else 0
        except ValueError:
            value = 0
        if not sep or not name or value < 1:
            raise DalabError(f"--epochs-for: expected METHOD=N with N a positive integer, got {item!r}")
        if name in epochs_for:
            raise DalabError(f"--epochs-for: {name!r} is given twice")
        epochs_for[name] = value
    launcher = make_launcher(args, Path(args.out) / "submitit", progress=not args.quiet, log=log,
                             wait=not args.no_wait)
    res = run_benchmark(args.suite, args.seeds, args.out, methods=methods, epochs=args.epochs,
                        epochs_for=epochs_for,
                        limit_train=args.limit_train, limit_eval=args.limit_eval, device=args.device,
                        data_dir=args.data_dir, precision=args.precision, progress=not args.quiet,
                        log=log, jobs=args.jobs, pairs=pairs, launcher=launcher)
    if res["rows"] is None:  # submitted, not waited for
        if args.json:
            print_json(res["runs"])
        return 0
    _show(args, res)
    return 0


def _show(args, res: dict) -> None:
    if args.json:
        print_json(res["rows"])
    else:
        print()
        print(res["table"])
