"""A run's :class:`~dalab.training.sources.DataSource`, from the domains its config names (or the
user's in-memory tensors): the checks that a pair can train, then resident tensors or streamed
files, whichever the domains are."""

from __future__ import annotations

from ..data import load_domain
from ..data.folder import check_pair
from ..errors import DalabError
from ..tasks import TASKS, get_task
from .distributed import all_sum
from .sources import ResidentSource, StreamedSource, refuse_whole_target_set


def open_data(cfg, method, device, dist, user_data=None):
    """The data source of a run: ``user_data`` (a TensorData) when given, else the two domains of ``cfg``."""
    if user_data is not None:
        return user_data.source(device, method, cfg, dist)
    progress = None if dist.is_main else False  # the header check's bar: the first process only
    src = load_domain(cfg.source, cfg.data_dir, progress=progress)
    tgt = load_domain(cfg.target, cfg.data_dir, progress=progress)
    check_task(cfg, method, src, tgt)
    check_pair(src, tgt, method.uses_target_labels)  # unlabelled source, class-name mismatch
    if any(getattr(s, "streamed", False) for d in (src, tgt) for s in d.splits.values()):
        return _streamed(cfg, method, device, dist, src, tgt)
    task = get_task(src.task)
    train = {"xs": None, "ys": None, "xt": None, "yt_train": None}
    train["xs"], train["ys"] = src["train"].tensors(device, cfg.limit_train)
    if method.uses_target:
        train["xt"], train["yt_train"] = tgt["train"].tensors(device, cfg.limit_train)
    evals = {split: dom[name].tensors(device, cfg.limit_eval)
             for split, dom, name in (("source_val", src, "val"), ("source_test", src, "test"),
                                      ("target_test", tgt, "test"))}
    return ResidentSource(src, tgt, {"target_scored_split": "test"}, **train, evals=evals, batch=cfg.batch_size,
                          rank=dist.rank, world_size=dist.world_size, seed=cfg.seed,
                          uses_target_labels=method.uses_target_labels, eval_batch=task.eval_batch)


def check_task(cfg, method, src, tgt) -> None:
    """Both domains of one task, and a method that handles it (one clear error otherwise)."""
    ts, tt = getattr(src, "task", "classification"), getattr(tgt, "task", "classification")
    if ts != tt:
        raise DalabError(f"--source {cfg.source} is a {ts} domain and --target {cfg.target} a {tt} "
                         "domain: pair two domains of the same task")
    if ts not in TASKS:
        raise DalabError(f"domain {cfg.source}: unknown task {ts!r}")
    if ts not in method.tasks:
        from ..methods import METHODS

        fit = ", ".join(n for n, m in METHODS.items() if ts in m.tasks)
        raise DalabError(f"method {method.name!r} does not handle {ts} (methods for {ts}: {fit})")


def _streamed(cfg, method, device, dist, src, tgt) -> StreamedSource:
    """Domains read from files: one training DataLoader per domain (this rank's share of each global
    batch; images at the dataset's base size, or as stored with ``--resize native``, then random scale,
    crop and flip) and evaluation loaders (images at ``--eval-size``, by default the same size as the
    training crops were cut from; scored at the labels' full resolution). The target's training loader
    reads no label unless the method is the oracle. The target's scored split is its ``test`` split, or
    ``val`` where it has no test labels (Cityscapes)."""
    W, r = dist.world_size, dist.rank
    if cfg.crop_size is None:  # images of many sizes, randomly rescaled: batches need one size
        raise DalabError("--crop HxW is required for domains read from files (e.g. --crop 512x512)")
    refuse_whole_target_set(method)
    b = cfg.batch_size // W
    size = "native" if cfg.resize == "native" else "base"
    common = dict(workers=cfg.workers, rank=r, world_size=W, pin_memory=device.type == "cuda")
    train = dict(crop=cfg.crop_size, size=size, limit=cfg.limit_train, **common)
    loaders = {"source": src["train"].loader(b, True, seed=cfg.seed, labels=True, **train)}
    if method.uses_target:
        loaders["target"] = tgt["train"].loader(b, True, seed=cfg.seed + 1, labels=method.uses_target_labels,
                                                **train)
    tgt_split = "test" if "test" in tgt.splits else "val"
    evals = {}
    for split, dom, name in (("source_val", src, "val"), ("source_test", src, "test"), ("target_test", tgt, tgt_split)):
        if name in dom.splits and getattr(dom[name], "labelled", True):
            evals[split] = dom[name].loader(max(1, b // 2), False, seed=cfg.seed, size=cfg.eval_size or size,
                                            limit=cfg.limit_eval, **common)
    facts = {"target_scored_split": tgt_split, "resize": size, "eval_size": cfg.eval_size or size}
    checks = {d: dom.pair_check for d, dom in (("source", src), ("target", tgt)) if dom.pair_check is not None}
    if checks:
        facts["data_check"] = {d: c.counts() for d, c in checks.items()}
    log = [f"{d}: {line}" for d, c in checks.items() for line in c.log_lines()]
    return StreamedSource(src, tgt, facts, "\n".join(log) + "\n" if log else None, loaders=loaders, evals=evals,
                          device=device, reduce=lambda t: all_sum(t, dist), crop=cfg.crop_size)
