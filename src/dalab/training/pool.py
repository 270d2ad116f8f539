"""Independent runs in parallel on one machine: one isolated process per run.

:func:`run_parallel` starts ``python -m dalab.training.pool CONFIG.json OUT`` for each
pending run, at most ``jobs`` at a time. Each process trains one run with the usual
:class:`~dalab.training.Trainer` (so it writes its own ``summary.json``/``ckpt.pt`` and
resumes a killed run). A process that fails, diverges or even crashes (segfault, OOM
kill) is recorded with its reason and the others go on; a run whose ``summary.json``
exists is skipped. Each worker gets ``threads`` torch threads (default: cores // jobs), so
``jobs`` runs share the CPU instead of fighting over it. On GPUs, give each job its own
card with ``CUDA_VISIBLE_DEVICES`` or run several small jobs on one card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.io import atomic_write_json
from ..tasks import headline
from .config import TrainConfig


@dataclass
class Job:
    label: str
    config: TrainConfig
    out: Path


def failure_record(method: str, seed: int, reason: str) -> dict:
    """The summary-shaped record of a run that failed before writing ``summary.json``."""
    return {"method": method, "seed": seed, "status": "failed", "failure": reason,
            "source_test_acc": None, "target_test_acc": None, "source_val_acc": None, "train_seconds": None}


def default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def finished_summary(job: Job) -> dict | None:
    """The ``summary.json`` of ``job``'s run when it is finished and kept, else None (to be trained).

    A finished run asked for more epochs than it has is continued (the worker resumes it), so it
    counts as not finished; any other finished run (completed or diverged) is kept.
    """
    summ = job.out / "summary.json"
    s = json.loads(summ.read_text()) if summ.is_file() else None
    if s is not None and not (s.get("status") == "completed" and s.get("epochs_done", 0) < job.config.epochs):
        return s
    return None


def run_outcome(job: Job, returncode: int, log_path: str | Path | None = None) -> dict:
    """What a worker that exited with ``returncode`` left: its ``summary.json``, the failure it recorded
    in ``failure.json`` (then removed, so the run is retried next time), or a failure record made from the
    exit code and the last line of ``log_path``."""
    summ, fail = job.out / "summary.json", job.out / "failure.json"
    if summ.is_file():
        return json.loads(summ.read_text())
    if fail.is_file():
        reason = json.loads(fail.read_text())["failure"]
        fail.unlink()
        return failure_record(job.config.method, job.config.seed, reason)
    log = Path(log_path) if log_path else None
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.is_file() else []
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
    return failure_record(job.config.method, job.config.seed,
                          f"worker {how}" + (f": {tail[0][:200]}" if tail else ""))


def run_parallel(jobs_list: list[Job], jobs: int, threads: int | None = None, log=print) -> dict[str, dict]:
    """Run every job (skipping finished ones); returns ``label -> summary`` (or a failure record)."""
    threads = threads or default_threads(jobs)
    results: dict[str, dict] = {}
    pending = []
    for job in jobs_list:
        s = finished_summary(job)
        if s is not None:
            results[job.label] = s
        else:
            pending.append(job)
    running: list[tuple[Job, subprocess.Popen, str, float]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="dalab-pool-") as tmp:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                job.out.mkdir(parents=True, exist_ok=True)
                cfg_path = Path(tmp) / f"{job.out.name}-{id(job)}.json"
                cfg_path.write_text(json.dumps(job.config.to_dict()))
                logf = job.out / "worker.log"
                with open(logf, "w") as lf:
                    p = subprocess.Popen([sys.executable, "-m", "dalab.training.pool", str(cfg_path),
                                          str(job.out), str(threads)], stdout=lf, stderr=subprocess.STDOUT,
                                         env=env)
                running.append((job, p, str(logf), time.perf_counter()))
            time.sleep(0.2)
            still = []
            for job, p, logf, t0 in running:
                rc = p.poll()
                if rc is None:
                    still.append((job, p, logf, t0))
                    continue
                res = run_outcome(job, rc, logf)
                results[job.label] = res
                acc = headline(res, "target_test")
                log(f"{job.label}: {res.get('status')}" + (f", target {100 * acc:.1f}%" if acc is not None else
                                                           f" ({res.get('failure')})")
                    + f" ({time.perf_counter() - t0:.0f} s)")
            running = still
    return results


def _worker(cfg_path: str, out: str, threads: str) -> int:
    import torch

    from ..errors import DalabError
    from .trainer import Trainer

    torch.set_num_threads(int(threads))
    cfg = TrainConfig.from_dict(json.loads(Path(cfg_path).read_text()))
    try:
        Trainer(cfg, out, progress=False, resume=True).fit()
    except DalabError as e:  # recorded next to the run; the pool reads it from worker.log / failure.json
        atomic_write_json(Path(out) / "failure.json", {"failure": str(e)})
        print(f"dalab: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:4]))
