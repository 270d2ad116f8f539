"""A sweep's runs as the tasks of a Slurm job array, through submitit (optional ``cluster`` extra).

:class:`SubmititLauncher` takes the same :class:`~dalab.training.pool.Job` list as
:func:`~dalab.training.pool.run_parallel` and returns the same ``label -> summary`` dict, so
``dalab benchmark`` and ``dalab study`` hand their runs to it instead of the local pool.

- **Executor.** With ``sbatch`` on ``PATH`` the runs go to Slurm: one job array per call
  (``Executor.submit_array``), ``#SBATCH --array=0-(n-1)%P`` with ``P`` runs at once, each task
  with the resources of one run. Without ``sbatch`` the same tasks run through submitit's
  ``LocalExecutor`` as local processes (at most ``P`` at once), which is how the tests run them.
- **A task** (:class:`RunTask`) trains one run in a child process: ``python -m
  dalab.training.pool CONFIG OUT THREADS`` (the pool's worker, which always resumes from
  ``OUT/ckpt.pt``), or with ``gpus > 1``, ``python -m torch.distributed.run --standalone
  --nproc_per_node N -m dalab.training.pool ...`` (torchrun: one process per GPU, the global batch
  of ``docs/distributed.md``). Its output goes to the job's log (``OUT/submitit/<job>/``).
- **Pre-emption and time limits.** Slurm signals a task (submitit asks for ``USR2`` 90 s before
  the time limit; pre-emption sends it too). submitit then calls :meth:`RunTask.checkpoint`, which
  stops the child (its last ``ckpt.pt`` is complete: checkpoints are written to a temporary file and
  renamed) and returns the same task, which Slurm requeues; it resumes from that checkpoint. A task
  that times out is requeued at most 3 times (submitit's ``max_num_timeout``); pre-emptions do not count.
- **Records.** Each submitted run gets ``OUT/job.json`` (executor, job id, log paths). A run whose
  job is still pending or running is not submitted again; ``dalab benchmark --collect`` reads
  the records to say why a run is missing.
- **Waiting** shows a progress bar of finished runs. Interrupting it leaves the jobs running.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.io import atomic_write_json
from ..errors import DalabError
from .config import TrainConfig
from .pool import Job, failure_record, finished_summary, run_outcome

PIP = "pip install 'dalab[cluster]' (or: pip install 'submitit>=1.5')"
#: the time limit of a task of the local executor when none is given (submitit's own default is 2 min)
LOCAL_TIME_MIN = 7 * 24 * 60
#: submitit's states of a job that is not over (its ``InfoWatcher.is_done``); UNKNOWN: not known to sacct yet
LIVE_STATES = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
               "SUSPENDED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
#: sbatch options that submitit writes itself; --slurm-extra may not set them
SUBMITIT_OWNS = {"array", "output", "error", "open-mode", "signal", "wrap"}
RECORD = "job.json"


def import_submitit():
    """The submitit module, or a one-line error that says what to install."""
    try:
        import submitit
    except ImportError:
        raise DalabError(f"--launcher submitit needs the submitit package: {PIP}") from None
    return submitit


# ---------------------------------------------------------------------------------------------- options
def parse_time(value, what: str = "--slurm-time") -> int:
    """Slurm's time formats to whole minutes (rounded up): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S`` (as ``sbatch --time`` reads them), or a number of minutes."""
    if isinstance(value, bool):
        raise DalabError(f"{what}: expected a time such as 90 or 4:00:00, got {value!r}")
    if isinstance(value, int):
        minutes = value
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
        if not m:
            raise DalabError(f"{what}: expected a time such as 90 (minutes), 4:00:00 or 1-12:00, got {value!r}")
        days, a, b, c = m.groups()
        nums = [int(x) for x in (a, b, c) if x is not None]
        if days is not None:  # D-H[:M[:S]]
            h, mi, s = (nums + [0, 0])[:3]
            seconds = ((int(days) * 24 + h) * 60 + mi) * 60 + s
        elif len(nums) == 1:
            seconds = nums[0] * 60
        elif len(nums) == 2:  # minutes:seconds
            seconds = nums[0] * 60 + nums[1]
        else:
            seconds = (nums[0] * 60 + nums[1]) * 60 + nums[2]
        minutes = math.ceil(seconds / 60)
    if minutes < 1:
        raise DalabError(f"{what}: must be at least one minute, got {value!r}")
    return minutes


_MEM_UNITS = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


def parse_mem(value, what: str = "--slurm-mem") -> float:
    """A memory size with its unit (``500M``, ``16G``, ``1T``; Slurm's letters) to GiB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT])B?", str(value).strip(), flags=re.IGNORECASE)
    if not m or isinstance(value, (int, float)):
        raise DalabError(f"{what}: expected a size with its unit, e.g. 16G or 500M, got {value!r}")
    gb = float(m.group(1)) * _MEM_UNITS[m.group(2).upper()]
    if gb <= 0:
        raise DalabError(f"{what}: must be more than 0, got {value!r}")
    return gb


def _positive(value, what: str) -> int:
    try:
        v = int(value) if not isinstance(value, bool) and str(value).strip().isdigit() else 0
    except ValueError:
        v = 0
    if v < 1:
        raise DalabError(f"{what}: expected a positive integer, got {value!r}")
    return v


def parse_extra(value, what: str = "--slurm-extra") -> dict:
    """Extra ``sbatch`` options, ``"--account=abc --qos high --exclusive"`` (or a list of such words), to
    ``{"account": "abc", "qos": "high", "exclusive": True}``; long options only."""
    words = value if isinstance(value, list) else shlex.split(str(value))
    out: dict = {}
    i = 0
    while i < len(words):
        w = str(words[i])
        if not w.startswith("--") or len(w) < 3:
            raise DalabError(f"{what}: expected long sbatch options such as --account=NAME, got {w!r}")
        key, eq, val = w[2:].partition("=")
        if not eq:
            nxt = str(words[i + 1]) if i + 1 < len(words) else None
            if nxt is not None and not nxt.startswith("-"):
                val, i = nxt, i + 1
            else:
                val = True
        if key in SUBMITIT_OWNS:
            raise DalabError(f"{what}: --{key} is set by submitit itself")
        out[key] = val
        i += 1
    return out


OPTION_KEYS = ("partition", "time", "cpus", "gpus", "mem", "parallel", "extra")


@dataclass
class SlurmOptions:
    """What each run asks of Slurm; ``None``: not given (Slurm's or submitit's default)."""

    partition: str | None = None
    time_min: int | None = None
    cpus: int | None = None      # CPUs per run (--cpus-per-task); also the run's torch threads
    gpus: int | None = None      # GPUs per run (--gpus-per-node); > 1: torchrun inside the task
    mem_gb: float | None = None  # memory per run
    parallel: int | None = None  # runs at once (the array's %N; the local executor's processes)
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, values: dict, where: str = "--slurm-") -> "SlurmOptions":
        """From ``{key: value}`` with keys of :data:`OPTION_KEYS` (flags' strings or a JSON file's values)."""
        bad = [k for k in values if k not in OPTION_KEYS]
        if bad:
            raise DalabError(f"{where}: unknown option {bad[0]!r} (known: {', '.join(OPTION_KEYS)})")

        def name(k):
            return f"{where}{k}" if where.endswith("-") else f"{where}: {k}"

        o = cls()
        for k, v in values.items():
            if v is None:
                continue
            if k == "partition":
                if not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v.strip()):
                    raise DalabError(f"{name(k)}: expected a partition name, got {v!r}")
                o.partition = v.strip()
            elif k == "time":
                o.time_min = parse_time(v, name(k))
            elif k == "mem":
                o.mem_gb = parse_mem(v, name(k))
            elif k == "extra":
                o.extra = parse_extra(v, name(k))
            else:
                setattr(o, k, _positive(v, name(k)))
        return o

    @classmethod
    def from_file(cls, path) -> "SlurmOptions":
        """A JSON object with the keys of :data:`OPTION_KEYS`, e.g.
        ``{"partition": "gpu", "time": "4:00:00", "gpus": 1, "cpus": 8, "mem": "32G", "parallel": 16}``."""
        p = Path(path)
        try:
            values = json.loads(p.read_text())
        except OSError as e:
            raise DalabError(f"--slurm-config {p}: cannot read it ({e.strerror})") from None
        except ValueError as e:
            raise DalabError(f"--slurm-config {p}: not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise DalabError(f"--slurm-config {p}: expected a JSON object of Slurm options")
        return cls.parse(values, f"--slurm-config {p}")

    def updated(self, other: "SlurmOptions") -> "SlurmOptions":
        """These options with those given in ``other`` (flags over a config file)."""
        merged = SlurmOptions(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        for k in self.__dataclass_fields__:
            v = getattr(other, k)
            if v is not None and v != {}:
                setattr(merged, k, v)
        return merged


def executor_kind() -> str:
    """``slurm`` when ``sbatch`` is on PATH, else ``local`` (submitit's LocalExecutor)."""
    return "slurm" if shutil.which("sbatch") else "local"


# ---------------------------------------------------------------------------------------------- the task
def _preempt_signal() -> signal.Signals:
    """The signal submitit's tasks treat as pre-emption (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class RunTask:
    """One run as a submitit task (picklable; submitit calls it on the node).

    ``__call__`` trains the run in a child process (:meth:`command`) and returns its summary or a
    failure record. The child ignores the pre-emption signal (an ignored signal stays ignored across
    ``exec``), so only this process handles it: submitit calls :meth:`checkpoint`, which stops the child
    and returns this task again for the requeue; the new attempt resumes from the run's ``ckpt.pt``.
    """

    def __init__(self, label: str, config: dict, out: str, threads: int, gpus: int = 0):
        self.label, self.config, self.out = label, dict(config), str(out)
        self.threads, self.gpus = int(threads), int(gpus or 0)
        self._proc: subprocess.Popen | None = None

    def command(self, config_path: str) -> list[str]:
        """The command that trains the run whose config is in ``config_path``."""
        worker = ["-m", "dalab.training.pool", config_path, self.out, str(self.threads)]
        if self.gpus > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.gpus}", *worker]
        return [sys.executable, *worker]

    def __call__(self) -> dict:
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / "ckpt.pt"
        print(f"{self.label}: " + (f"resuming from {ckpt}" if ckpt.is_file() else f"training into {out}"),
              flush=True)
        sig = _preempt_signal()
        with tempfile.TemporaryDirectory(prefix="dalab-task-") as tmp:
            cfg_path = Path(tmp) / "config.json"
            cfg_path.write_text(json.dumps(self.config))
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
            self._proc = subprocess.Popen(self.command(str(cfg_path)), env=env,
                                          preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))
            # polled, not Popen.wait(): a blocking wait holds Popen's (non-reentrant) lock, which
            # checkpoint(), run by the signal handler in this thread, would then wait for forever
            while (rc := self._proc.poll()) is None:
                time.sleep(0.2)
            self._proc = None
        job = Job(self.label, TrainConfig.from_dict(self.config), out)
        res = run_outcome(job, rc)
        print(f"{self.label}: {res.get('status')}" + (f" ({res['failure']})" if res.get("failure") else ""),
              flush=True)
        return res

    def checkpoint(self, *args, **kwargs):
        """Called by submitit when the task is pre-empted or about to time out: stop the training child
        (its last checkpoint is whole) and resubmit this task, which resumes from that checkpoint."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            if not _ended(proc, 30.0):
                proc.kill()
                _ended(proc, 10.0)
        from submitit.helpers import DelayedSubmission

        print(f"{self.label}: stopped; requeued to resume from {Path(self.out) / 'ckpt.pt'}", flush=True)
        return DelayedSubmission(RunTask(self.label, self.config, self.out, self.threads, self.gpus))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._proc = None


def _ended(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether ``proc`` ends within ``seconds``, by polling (never blocks on Popen's lock)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------- records
def read_record(run_dir: Path) -> dict | None:
    try:
        rec = json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("job_id") else None


def _pid_runs(pid: str, needle: str) -> bool:
    """Whether process ``pid`` is alive with ``needle`` in its command line (Linux /proc; else False)."""
    try:
        cmd = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return False
    return needle in cmd


def _job_handle(record: dict):
    """A submitit job object for a recorded job (Slurm: its state comes from sacct)."""
    submitit = import_submitit()
    cls = submitit.SlurmJob if record.get("executor") == "slurm" else submitit.LocalJob
    return cls(folder=record["folder"], job_id=str(record["job_id"]))


def record_state(record: dict) -> str:
    """The state of a recorded job: FINISHED (it left a result), a Slurm state (sacct), or for the
    local executor RUNNING / ENDED (whether its controller process is alive)."""
    handle = _job_handle(record)
    if handle.paths.result_pickle.exists():
        return "FINISHED"
    if record.get("executor") == "local":
        return "RUNNING" if _pid_runs(record["job_id"], "submitit.local._local") else "ENDED"
    try:
        return str(handle.state).upper()
    except Exception:  # noqa: BLE001 - sacct missing or failing: not known
        return "UNKNOWN"


def record_live(record: dict | None) -> bool:
    return record is not None and record_state(record) in LIVE_STATES


def record_outcome(record: dict, method: str | None, seed: int | None) -> dict:
    """What an ended job left: the task's own record (summary or failure), the job's error, or a failure
    that says the job ended without a result; each failure names the job's log."""
    handle = _job_handle(record)
    log = record.get("stdout") or str(handle.paths.stdout)
    where = f"job {record['job_id']}, log {log}"
    if handle.paths.result_pickle.exists():
        try:
            res = handle.result()
        except Exception as e:  # noqa: BLE001 - the task raised: its trace is in the pickle and the log
            last = [ln for ln in str(e).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
            reason = next((ln.strip() for ln in reversed(last) if not ln.startswith(("You can check", "or at",
                                                                                   "  - "))), "failed")
            return failure_record(method, seed, f"the task failed: {reason[:200]} ({where})")
        if isinstance(res, dict):
            if res.get("status") != "completed" and res.get("failure") and "log " not in res["failure"]:
                res = {**res, "failure": f"{res['failure']} ({where})"}
            return res
        return failure_record(method, seed, f"the task returned {type(res).__name__} ({where})")
    state = record_state(record)
    return failure_record(method, seed, f"the job ended without a result (state {state}; {where})")


# ---------------------------------------------------------------------------------------------- the launcher
@dataclass
class _Tracked:
    job: Job
    record: dict
    handle: object = None  # the submitit job object of a job submitted by this launcher

    def done(self) -> bool:
        if self.handle is not None:
            try:
                return bool(self.handle.done())
            except Exception:  # noqa: BLE001 - a state query failed: judged from the record below
                pass
        return not record_live(self.record)


class SubmititLauncher:
    """Runs :class:`~dalab.training.pool.Job` lists through submitit (Slurm, else its local executor).

    ``folder`` holds submitit's files (``folder/<job id>/``: the sbatch script, pickles, logs).
    ``wait=False`` submits and returns at once: the runs still going have records with
    ``status: "submitted"``.
    """

    def __init__(self, folder, options: SlurmOptions | None = None, *, wait: bool = True, progress: bool = True,
                 log=print, kind: str | None = None, poll_s: float | None = None):
        self.submitit = import_submitit()
        self.options = options or SlurmOptions()
        self.kind = kind or executor_kind()
        if self.kind == "slurm" and self.options.time_min is None:
            raise DalabError("--launcher submitit on Slurm needs --slurm-time (a run's time limit, e.g. 4:00:00); "
                             "submitit would ask for 5 minutes")
        self.folder = Path(folder).resolve()
        self.wait, self.progress, self.log = wait, progress, log
        self.poll_s = poll_s if poll_s is not None else (0.5 if self.kind == "local" else 15.0)
        o = self.options
        self.parallel = o.parallel or (1 if self.kind == "local" else None)
        gpus = o.gpus or 0
        # the run's torch threads: its CPUs, split over its torchrun processes; locally the cores over the
        # runs at once
        cpus = o.cpus or (max(1, (os.cpu_count() or 1) // self.parallel) if self.kind == "local" else 1)
        self.threads = max(1, cpus // max(1, gpus))
        self.gpus = gpus

    # ------------------------------------------------------------------ executor
    def describe(self) -> str:
        if self.kind == "slurm":
            return f"submitit, Slurm executor (sbatch on PATH); logs under {self.folder}/<job id>/"
        return (f"submitit, local executor (no sbatch on PATH: each run a local process, at most {self.parallel} "
                f"at once); logs under {self.folder}/<job id>/")

    def executor(self):
        """The configured submitit executor: ``SlurmExecutor``, or ``LocalExecutor`` without Slurm."""
        o = self.options
        folder = str(self.folder / "%j")
        if self.kind == "slurm":
            try:
                ex = self.submitit.SlurmExecutor(folder=folder)
            except RuntimeError as e:  # e.g. sbatch on PATH but not srun
                raise DalabError(f"--launcher submitit: submitit cannot use Slurm here ({e})") from None
            params: dict = {"job_name": "dalab", "time": o.time_min, "nodes": 1, "ntasks_per_node": 1}
            if o.cpus:
                params["cpus_per_task"] = o.cpus
            if o.gpus:
                params["gpus_per_node"] = o.gpus
            if o.mem_gb:
                gb = o.mem_gb
                params["mem"] = f"{int(gb)}G" if gb == int(gb) else f"{math.ceil(gb * 1024)}M"
            if o.partition:
                params["partition"] = o.partition
            if self.parallel:
                params["array_parallelism"] = self.parallel
            if o.extra:
                params["additional_parameters"] = dict(o.extra)
        else:
            ex = self.submitit.LocalExecutor(folder=folder)
            params = {"timeout_min": o.time_min or LOCAL_TIME_MIN, **self._local_gpus()}
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError) as e:
            raise DalabError(f"--launcher submitit: bad Slurm option ({str(e).splitlines()[0]})") from None
        return ex

    def _local_gpus(self) -> dict:
        """The local executor sets CUDA_VISIBLE_DEVICES for each job: give it the GPUs asked for, or all
        visible ones (its default of none would hide them)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [int(x) for x in visible.split(",") if x.strip().isdigit()] if visible else None
        want = self.options.gpus
        if want is None:
            try:
                import torch

                want = torch.cuda.device_count()
            except Exception:  # noqa: BLE001
                want = 0
        if ids is not None:
            want = min(want, len(ids))
        return {"gpus_per_node": want, **({"visible_gpus": ids} if ids else {})}

    def task(self, job: Job) -> RunTask:
        return RunTask(job.label, job.config.to_dict(), str(Path(job.out).resolve()), self.threads, self.gpus)

    # ------------------------------------------------------------------ running
    def _record(self, job: Job, handle) -> dict:
        rec = {"executor": self.kind, "job_id": str(handle.job_id), "folder": str(self.folder / "%j"),
               "stdout": str(handle.paths.stdout), "stderr": str(handle.paths.stderr), "label": job.label,
               "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        Path(job.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(job.out) / RECORD, rec)
        return rec

    def submit(self, jobs_list: list[Job]) -> list[_Tracked]:
        """Submit ``jobs_list`` now (Slurm: one job array); returns what to track."""
        if not jobs_list:
            return []
        ex = self.executor()
        handles = ex.submit_array([self.task(j) for j in jobs_list])
        tracked = [_Tracked(j, self._record(j, h), h) for j, h in zip(jobs_list, handles)]
        if self.kind == "slurm":
            array = str(handles[0].job_id).split("_")[0]
            self.log(f"submitted job array {array}: {len(jobs_list)} runs"
                     + (f", at most {self.parallel} at once" if self.parallel else "")
                     + f"; script {self.folder / array / f'{array}_submission.sh'}, logs under "
                       f"{self.folder}/{array}_<task>/")
        return tracked

    def run(self, jobs_list: list[Job]) -> dict[str, dict]:
        """Run every job not finished yet (a finished run is kept, as the pool does; a run whose recorded
        job is still pending or running is waited for, not submitted again); ``label -> summary``."""
        results: dict[str, dict] = {}
        todo: list[Job] = []
        tracked: list[_Tracked] = []
        for job in jobs_list:
            s = finished_summary(job)
            if s is not None:
                results[job.label] = s
                continue
            rec = read_record(job.out)
            if record_live(rec):
                self.log(f"{job.label}: already submitted as job {rec['job_id']} ({record_state(rec)}), "
                         "not submitted again")
                tracked.append(_Tracked(job, rec))
            else:
                todo.append(job)
        if not todo and not tracked:
            return results
        self.log(self.describe())
        if self.kind == "slurm" or not self.wait:
            tracked += self.submit(todo)
            todo = []
        if not self.wait:
            for t in tracked:
                results[t.job.label] = _submitted(t)
            return results
        return {**results, **self._wait(tracked, todo)}

    def _wait(self, tracked: list[_Tracked], queue: list[Job]) -> dict[str, dict]:
        return wait_for(tracked, queue=queue, submit=self.submit, parallel=self.parallel, poll_s=self.poll_s,
                        progress=self.progress, log=self.log)


def track(job: Job, record: dict) -> _Tracked:
    """A recorded job (submitted by an earlier call) to wait for."""
    return _Tracked(job, record)


def wait_for(tracked: list[_Tracked], *, queue: list[Job] = (), submit=None, parallel: int | None = None,
             poll_s: float = 0.5, progress: bool = True, log=print) -> dict[str, dict]:
    """Wait until every job of ``tracked`` has ended, with a progress bar of finished runs, and return
    ``label -> summary or failure record``. ``queue``: jobs that ``submit`` starts as slots free up (at most
    ``parallel`` at once; the local executor, which has no array to throttle)."""
    from tqdm import tqdm

    total = len(tracked) + len(queue)
    log(f"waiting for {total} run{'s' * (total != 1)} (interrupting stops the waiting, not the jobs; "
        "`dalab benchmark --collect OUT` shows where they are)")
    results: dict[str, dict] = {}
    bar = tqdm(total=total, desc="runs finished", unit="run", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    pending = list(tracked)
    queue = list(queue)
    try:
        while pending or queue:
            free = (parallel or len(queue)) - len(pending)
            if queue and free > 0:
                pending += submit(queue[:free])
                queue = queue[free:]
            still = []
            for t in pending:
                if not t.done():
                    still.append(t)
                    continue
                res = record_outcome(t.record, t.job.config.method, t.job.config.seed)
                results[t.job.label] = res
                bar.update(1)
                log(f"{t.job.label}: {res.get('status')}"
                    + (f" ({res['failure']})" if res.get("status") != "completed" and res.get("failure") else ""))
            pending = still
            if pending or queue:
                time.sleep(poll_s)
    finally:
        bar.close()
    return results


def _submitted(t: _Tracked) -> dict:
    rec = failure_record(t.job.config.method, t.job.config.seed,
                         f"submitted as job {t.record['job_id']} (log {t.record['stdout']})")
    rec["status"] = "submitted"
    rec["job"] = t.record
    return rec
