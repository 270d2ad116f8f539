"""``dalab study``: run the practical's four experiments and write the report."""

from __future__ import annotations

from pathlib import Path

from ..errors import DalabError
from .common import DEVICE_HELP, HelpFormatter, add_data_dir, positive_int
from .launch_args import LAUNCHER_EPILOG, add_launcher_args, make_launcher

EPILOG = """examples:
  dalab study --preset quick --out runs/study            # ~30 min on 2 CPU cores
  dalab study --preset full --out runs/study-full --device cuda
  dalab study --preset quick --out runs/study --report-only   # rebuild the report from finished runs

Writes DIR/report.md, DIR/report.html (self-contained), DIR/figures/*.png and
DIR/results.json. Each run lives in DIR/runs/<budget>/<config>-s<seed>/; a finished run is
reused and a killed one resumes, so re-running a killed study continues where it stopped.
Target labels are never used for training or model selection.

  dalab study --preset full --out runs/study-full --device cuda --launcher submitit \\
      --slurm-partition gpu --slurm-time 1:00:00 --slurm-gpus 1 --slurm-cpus 8 --slurm-parallel 20

""" + LAUNCHER_EPILOG + """Pseudo-label runs are submitted in a second wave, after their teachers; the command
waits for both waves (if it stops, running jobs go on and the same command again waits
for them instead of submitting them twice), then analyses and writes the report.
"""


def add_parser(sub) -> None:
    from ..experiments.study import PRESETS

    p = sub.add_parser("study", help="answer the practical's four questions with measured runs -> report",
                       epilog=EPILOG, formatter_class=HelpFormatter,
                       description="Source-only / DANN / no-GRL, a lambda sweep, lambda schedules and "
                                   "pseudo-labelling over several seeds, then report.md + report.html.")
    p.add_argument("--preset", choices=list(PRESETS), default="quick",
                   help="quick: ~30 min on 2 CPU cores; full: the real study (GPU); smoke: test-only")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per configuration")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the report from the runs already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="independent runs in N parallel processes (each isolated; a crashed run is recorded)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (1 is much faster on a CPU shared with other jobs)")
    add_data_dir(p)
    add_launcher_args(p)
    p.set_defaults(func=run_study)


def run_study(args) -> int:
    from ..experiments.study import Study
    from ..reports.study_report import build_report

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if args.launcher == "submitit" and args.jobs > 1:
        raise DalabError("--jobs is for --launcher local; with submitit, --slurm-parallel N runs N at once")
    launcher = None if args.report_only else make_launcher(args, Path(args.out).resolve() / "submitit",
                                                           progress=not args.quiet, log=log)
    study = Study(args.preset, args.out, device=args.device, seeds=args.seeds, data_dir=args.data_dir, log=log,
                  jobs=args.jobs, threads=args.threads, launcher=launcher)
    if args.report_only:
        if not (Path(args.out) / "runs").is_dir():
            raise DalabError(f"--report-only: {args.out} holds no study runs")
        results = study.collect(study.analyse())
        from ..data.io import atomic_write_json

        atomic_write_json(study.out / "results.json", results)
    else:
        results = study.run()
    rep = build_report(results, study.out, data=study._data())
    log(f"report: {rep['html']} and {rep['md']}")
    for q, paras in rep["answers"].items():
        log(f"{q.upper()}: {paras[0]}")
    return 0
