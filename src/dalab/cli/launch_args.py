"""``--launcher`` and the Slurm options shared by ``dalab benchmark`` and ``dalab study``."""

from __future__ import annotations

from pathlib import Path

from ..errors import DalabError

SLURM_FLAGS = {  # flag -> key of SlurmOptions.parse
    "slurm_partition": "partition", "slurm_time": "time", "slurm_cpus": "cpus", "slurm_gpus": "gpus",
    "slurm_mem": "mem", "slurm_parallel": "parallel", "slurm_extra": "extra",
}

LAUNCHER_EPILOG = """cluster (--launcher submitit; pip install 'dalab[cluster]'):
  each run is one task of a Slurm job array (logs and sbatch script under OUT/submitit/);
  without sbatch on PATH the same tasks run through submitit's local executor.
  Options per run: --slurm-partition P --slurm-time 4:00:00 --slurm-cpus 8 --slurm-gpus 1
  --slurm-mem 32G, at most --slurm-parallel N at once, --slurm-extra "--account=A --qos=Q",
  or the same keys in a JSON file: --slurm-config slurm.json (flags win).
  --slurm-gpus N > 1 runs torchrun with N processes inside the task.
"""


def add_launcher_args(p) -> None:
    g = p.add_argument_group("launcher (Slurm through submitit)")
    g.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: this machine (--jobs); submitit: a Slurm job array, or submitit's local "
                        "executor when sbatch is not on PATH")
    g.add_argument("--slurm-config", default=None, metavar="FILE.json",
                   help="Slurm options as a JSON object with the keys partition, time, cpus, gpus, mem, "
                        "parallel, extra (flags below win)")
    g.add_argument("--slurm-partition", default=None, metavar="NAME", help="Slurm partition")
    g.add_argument("--slurm-time", default=None, metavar="TIME",
                   help="time limit of one run: minutes, H:MM:SS or D-HH:MM (required on Slurm)")
    g.add_argument("--slurm-cpus", default=None, metavar="N", help="CPUs per run (also its torch threads)")
    g.add_argument("--slurm-gpus", default=None, metavar="N",
                   help="GPUs per run; N > 1: torchrun with N processes inside the task")
    g.add_argument("--slurm-mem", default=None, metavar="SIZE", help="memory per run, e.g. 32G or 500M")
    g.add_argument("--slurm-parallel", default=None, metavar="N",
                   help="runs at once (the array's %%N; the local executor's processes, default 1)")
    g.add_argument("--slurm-extra", default=None, metavar="FLAGS",
                   help='more sbatch options, e.g. "--account=abc --qos=high"')


def make_launcher(args, folder: Path, *, progress: bool, log, wait: bool = True):
    """The :class:`~dalab.training.launcher.SubmititLauncher` the flags ask for, or None (``--launcher local``)."""
    given = {key: getattr(args, flag) for flag, key in SLURM_FLAGS.items() if getattr(args, flag) is not None}
    if args.launcher != "submitit":
        extra = next((f"--{f.replace('_', '-')}" for f in (*SLURM_FLAGS, "slurm_config")
                      if getattr(args, f) is not None), None)
        if extra:
            raise DalabError(f"{extra} needs --launcher submitit")
        return None
    from ..training.launcher import SlurmOptions, SubmititLauncher, import_submitit

    import_submitit()  # the missing package is the first thing to say
    opts = SlurmOptions.from_file(args.slurm_config) if args.slurm_config else SlurmOptions()
    opts = opts.updated(SlurmOptions.parse(given))
    return SubmititLauncher(folder, opts, wait=wait, progress=progress, log=log)
