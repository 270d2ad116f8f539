r"""``--precision auto``: precision and memory format chosen by measurement, not by a CPU flag.

A CPU that lists ``avx512_bf16`` may still run bf16 convolutions slower than fp32 (no AMX),
and whether channels_last pays depends on the network and the batch. So ``auto`` times the
candidates on the run's own network, method, batch size and device, and keeps the fastest:

- candidates: fp32 and (where autocast supports it on the device) bf16, each in NCHW and
  channels_last; an explicit ``--channels-last`` / ``--no-channels-last`` fixes the memory
  format and only the precisions are timed;
- each candidate trains its *own copy* of the model and method (and a fresh optimiser of
  the run's kind) for :data:`WARMUP` + :data:`TIMED` steps on the same batches, drawn with a
  private generator from the first images of the training sets, with the same seed for the
  random numbers of each step (augmentations, noise). The candidates take turns step by step,
  so a load change on a shared machine hits them alike; the figure is the fastest of the timed
  steps (other processes only ever add time, so the minimum is the least noisy estimate). The global RNG state is saved before and restored after: the run itself trains
  exactly as it would with the chosen settings given explicitly;
- a candidate is eligible only if each of its steps' losses agrees with fp32's (same starting
  weights, batches and random numbers): ``|loss - loss_fp32| <= LOSS_ATOL + LOSS_RTOL |loss_fp32|``
  (0.02 + 2 %), and is finite. The fp32 candidate in NCHW is the reference (fp32 channels_last
  when the memory format is fixed to it);
- the choice is cached per machine (CPU model and flags, thread count, or GPU name), torch
  version, network, method and batch size in ``<dalab cache dir>/speed-choices.json``
  (written atomically; a cache that cannot be written is only noted), so the measurement runs
  once. Runs started together take turns (a file lock): the first measures, the others read. A resumed run reuses the choice its checkpoint recorded and never measures again.

An explicit ``--precision fp32|bf16`` skips the measurement; the memory format is then the
flag's, or channels_last when none is given (dalab's fixed default before this module).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .device import rng_preserved

WARMUP, TIMED = 3, 5
LOSS_RTOL, LOSS_ATOL = 0.02, 0.02
CACHE_FILE = "speed-choices.json"
CACHE_FORMAT = "dalab-speed-choices-v1"

Candidate = tuple[str, bool]  # (precision, channels_last)


def memory_format_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "NCHW"


def label(c: Candidate) -> str:
    return f"{c[0]} {memory_format_name(c[1])}"


@dataclass(frozen=True)
class SpeedChoice:
    """What the run trains with, and how that was decided (recorded in summary.json and ckpt.pt)."""

    precision: str
    channels_last: bool
    how: str

    @property
    def memory_format(self) -> str:
        return memory_format_name(self.channels_last)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "how": self.how}

    @classmethod
    def from_dict(cls, d: dict) -> "SpeedChoice":
        return cls(str(d["precision"]), bool(d["channels_last"]), str(d.get("how", "")))


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` (on CUDA: the card supports bf16)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        return True
    except (RuntimeError, ValueError):
        return False


def candidates(device: torch.device, channels_last: bool | None) -> list[Candidate]:
    """The settings ``auto`` times: fp32 first (the reference), NCHW before channels_last."""
    precisions = ["fp32"] + (["bf16"] if bf16_autocast_supported(device) else [])
    formats = [False, True] if channels_last is None else [bool(channels_last)]
    return [(p, cl) for p in precisions for cl in formats]


def machine_id(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with a digest of its flags and the thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        pass
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12] if flags else "no-flags"
    return f"cpu: {model}, flags {digest}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads"


def cache_key(device: torch.device, network: dict, method: str, method_args: dict | None, batch: int,
              channels_last: bool | None, input_shape=None) -> str:
    """What a measured choice depends on: the machine, torch, the network, the method, the batch and the
    input size (a choice measured on 28x28 digits says nothing about 512x512 crops)."""
    return json.dumps({"machine": machine_id(device), "torch": torch.__version__, "network": network,
                       "method": method, "method_args": method_args or {}, "batch_per_domain": batch,
                       "channels_last": channels_last, "input": list(input_shape) if input_shape else None},
                      sort_keys=True)


# a measurement trains WARMUP + TIMED steps of every candidate (four on a CPU with bf16): it is made only
# for a run of at least SHORT_RUN times as many steps, so that it costs a few percent of the run at most
SHORT_RUN = 10


def read_cache(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict) or d.get("format") != CACHE_FORMAT or not isinstance(d.get("choices"), dict):
        return {}
    return d["choices"]


def write_cache(path: Path, key: str, entry: dict) -> str:
    """Add ``entry`` under ``key``; returns '' or why the cache could not be written."""
    from ..data.io import atomic_write_json

    choices = read_cache(path)
    choices[key] = entry
    try:
        atomic_write_json(path, {"format": CACHE_FORMAT, "choices": choices})
    except OSError as e:
        return f"not cached ({path}: {e.strerror or e})"
    return ""


def agrees(loss: float, ref: float) -> bool:
    return math.isfinite(loss) and abs(loss - ref) <= LOSS_ATOL + LOSS_RTOL * abs(ref)


def measure(step_fns: dict[Candidate, Callable[[int], float]], warmup: int = WARMUP, timed: int = TIMED,
            sync: Callable[[], None] = lambda: None) -> dict[Candidate, dict]:
    """Run every candidate's ``step(i)`` (returns that step's loss) for ``warmup + timed`` steps,
    taking turns step by step; returns ``{candidate: {"ms": the fastest timed step, "losses": [...]}}``."""
    out = {c: {"times": [], "losses": []} for c in step_fns}
    for i in range(warmup + timed):
        for c, step in step_fns.items():
            sync()
            t0 = time.perf_counter()
            loss = step(i)
            sync()
            dt = time.perf_counter() - t0
            out[c]["losses"].append(loss)
            if i >= warmup:
                out[c]["times"].append(dt)
    for r in out.values():
        t = r.pop("times")
        r["ms"] = 1000.0 * (min(t) if t else float("nan"))
    return out


def choose(results: dict[Candidate, dict]) -> tuple[Candidate, str]:
    """The fastest candidate whose losses agree with the fp32 reference's; and the figures, as text."""
    ref_c = next(c for c in results if c[0] == "fp32")
    ref = results[ref_c]["losses"]
    ok, parts = [], []
    for c, r in sorted(results.items(), key=lambda kv: kv[1]["ms"]):
        good = len(r["losses"]) == len(ref) and all(agrees(a, b) for a, b in zip(r["losses"], ref))
        if good:
            ok.append(c)
        parts.append(f"{label(c)} {r['ms']:.1f} ms" + ("" if good else " (loss disagrees with fp32: rejected)"))
    best = ok[0] if ok else ref_c
    return best, ", ".join(parts)


def resolve(precision: str, channels_last: bool | None, device: torch.device, *, resume_ck: dict | None,
            cache_dir: Path | None, key: str, run: Callable[[list[Candidate]], dict], batch: int,
            total_steps: int | None = None) -> SpeedChoice:
    """The run's :class:`SpeedChoice`: explicit flags, else the resumed checkpoint's record, else the
    cache, else fp32 for a run too short to pay for a measurement (fewer than :data:`SHORT_RUN` times the
    measurement's steps), else ``run(candidates)`` (a measurement, see :func:`measure_run`) and :func:`choose`."""
    if precision != "auto":
        cl = True if channels_last is None else bool(channels_last)
        return SpeedChoice(precision, cl, f"explicit: --precision {precision}, "
                           + (f"--{'' if cl else 'no-'}channels-last" if channels_last is not None
                              else "channels_last (the default with an explicit precision)"))
    note = ""
    if resume_ck is not None:
        rec = resume_ck.get("speed_choice")
        if rec:
            r = SpeedChoice.from_dict(rec)
            how = r.how.split("resumed: ")[-1]
            return SpeedChoice(r.precision, r.channels_last, f"resumed: as recorded in ckpt.pt ({how})")
        if channels_last is None and isinstance(resume_ck.get("config", {}).get("channels_last"), bool):
            channels_last = resume_ck["config"]["channels_last"]  # a checkpoint's run had a fixed memory format
        note = ("; at resume, the checkpoint does not record the precision it trained with "
                "(written before dalab recorded this choice)")
    path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    cost = (WARMUP + TIMED) * len(candidates(device, channels_last))
    short = total_steps is not None and total_steps < SHORT_RUN * cost

    def unmeasured() -> SpeedChoice:
        cl = bool(channels_last)
        return SpeedChoice("fp32", cl, f"fp32 {memory_format_name(cl)}, not measured: the run's {total_steps} steps "
                                       f"are fewer than {SHORT_RUN} times the {cost} a measurement takes{note}")

    if path is None or note:
        return unmeasured() if short else _measure(run, device, channels_last, batch, note, None, key)
    # runs started together (a study's --jobs) measure one at a time, and the later ones read the cache
    with _lock(path):
        cached = read_cache(path).get(key)
        if isinstance(cached, dict) and cached.get("precision") in ("fp32", "bf16"):
            return SpeedChoice(cached["precision"], bool(cached["channels_last"]),
                               f"cached: {cached.get('figures', '')} (measured {cached.get('measured_at', '?')}, {path})")
        return unmeasured() if short else _measure(run, device, channels_last, batch, note, path, key)


@contextlib.contextmanager
def _lock(path: Path):
    from ..data.io import file_lock

    try:
        ctx = file_lock(path.parent / f".{path.name}.lock")
        ctx.__enter__()
    except OSError:  # a cache folder that cannot be written: no lock, and the choice is not cached
        yield
        return
    try:
        yield
    finally:
        ctx.__exit__(None, None, None)


def _measure(run, device, channels_last, batch, note, path, key) -> SpeedChoice:
    t0 = time.perf_counter()
    try:
        results = run(candidates(device, channels_last))
    except (RuntimeError, TypeError, ValueError, copy.Error) as e:  # e.g. a user's network that cannot be copied
        cl = bool(channels_last)
        return SpeedChoice("fp32", cl, f"fp32 {memory_format_name(cl)}: could not measure ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0][:200] if str(e) else ''}){note}")
    (prec, cl), figures = choose(results)
    figures += (f" (fastest of {TIMED} steps after {WARMUP} warm-up, {batch}+{batch} images per step; "
                f"{time.perf_counter() - t0:.1f} s to measure)")
    how = f"measured: {figures}{note}"
    if path is not None:
        why = write_cache(path, key, {"precision": prec, "channels_last": cl, "figures": figures,
                                      "measured_at": now()})
        if why:
            how += f"; {why}"
    return SpeedChoice(prec, cl, how)


# ---------------------------------------------------------------- the run's own step, on copies
def measure_run(model: torch.nn.Module, method, make_optimizer: Callable, data: dict, batch: int,
                device: torch.device, cands: list[Candidate], lr_at: Callable[[float], float],
                total_steps: int, seed: int) -> dict[Candidate, dict]:
    """Time ``cands`` on copies of ``model`` and ``method`` with the trainer's step (loss under
    autocast, backward, optimiser step, the method's after-step hook), leaving the originals,
    the optimiser and every RNG untouched."""
    from ..methods import Batch
    from ..models.inference import autocast_ctx
    from .fastpath import take_rows

    steps = WARMUP + TIMED
    g = torch.Generator().manual_seed(seed + 7)
    xs, xt = data.get("xs"), data.get("xt")
    pool = lambda x: min(len(x), steps * batch)  # noqa: E731  the first images: pseudo-labels for them are cheap
    ps = torch.randint(0, pool(xs), (steps, batch), generator=g).to(device) if xs is not None else None
    pt = torch.randint(0, pool(xt), (steps, batch), generator=g).to(device) if xt is not None else None
    base = copy.deepcopy(model)
    base_method = copy.deepcopy(method)
    with rng_preserved():
        # what the first epoch start does (e.g. pseudo-labels), on the copies and the images used here
        base_method.on_epoch_start(base, 0, xt[:pool(xt)] if xt is not None else None)
        fns = {}
        for c in cands:
            m, meth = copy.deepcopy(base), copy.deepcopy(base_method)
            if c[1]:
                m = m.to(memory_format=torch.channels_last)
                meth.to(memory_format=torch.channels_last)
            opt = make_optimizer(m, meth)
            fns[c] = _stepper(m, meth, opt, data, ps, pt, c[0], device, lr_at, total_steps, seed, Batch, autocast_ctx,
                              take_rows)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        return measure(fns, sync=sync)


def _stepper(model, method, opt, data, ps, pt, precision, device, lr_at, total_steps, seed, Batch, autocast_ctx,
             take_rows):
    def step(i: int) -> float:
        torch.manual_seed(seed + 1000 + i)  # the same random numbers for every candidate at step i
        p = i / max(1, total_steps)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(p) * grp.get("lr_mult", 1.0)
        batch = Batch(xs=take_rows(data["xs"], ps[i]) if ps is not None else None,
                      ys=take_rows(data["ys"], ps[i]) if ps is not None else None,
                      xt=take_rows(data["xt"], pt[i]) if pt is not None else None,
                      yt=take_rows(data["yt_train"], pt[i]) if (pt is not None and method.uses_target_labels) else None,
                      p=p, idx_t=pt[i] if pt is not None else None)
        model.train()
        with autocast_ctx(device, precision):
            loss, _ = method.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(model)
        return float(loss.detach().float())
    return step


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
