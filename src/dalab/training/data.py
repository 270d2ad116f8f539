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
    opts = dict(progress=progress, image_size=cfg.image_size, strict=cfg.strict_files, stream=cfg.stream)
    src, tgt = load_domain(cfg.source, cfg.data_dir, **opts), load_domain(cfg.target, cfg.data_dir, **opts)
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
    facts, rcs = {"target_scored_split": "test"}, None
    if cfg.rare_class_sampling:
        from ..data.rcs import RareClassSampler

        check_rare_class_sampling(task)
        rcs = RareClassSampler.from_labels(train["ys"].cpu(), src.num_classes)
        facts["rare_class_sampling"] = rcs.class_table(src.classes)
    return ResidentSource(src, tgt, facts, **train, evals=evals, batch=cfg.batch_size,
                          rank=dist.rank, world_size=dist.world_size, seed=cfg.seed,
                          uses_target_labels=method.uses_target_labels, eval_batch=task.eval_batch, rcs=rcs)


def check_rare_class_sampling(task) -> None:
    if not task.dense:
        raise DalabError("rare-class sampling draws images by the classes of their pixels: it is for segmentation, "
                         f"not {task.name}")


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
    batch) and evaluation loaders, with the options the task gives (segmentation: the dataset's base size,
    random scale, crop and flip, evaluation at the size the crops were cut from, scored at the labels'
    full size; photos: random resized crops and centre crops at ``--image-size``). The target's training
    loader reads no label unless the method is the oracle. The target's scored split is its ``test``
    split, or ``val`` where it has no test labels (Cityscapes)."""
    W, r = dist.world_size, dist.rank
    task = get_task(src.task)
    if task.dense and cfg.crop_size is None:  # images of many sizes, randomly rescaled: batches need one size
        raise DalabError("--crop HxW is required for domains read from files (e.g. --crop 512x512)")
    refuse_whole_target_set(method)
    b = cfg.batch_size // W
    common = dict(workers=cfg.workers, rank=r, world_size=W, pin_memory=device.type == "cuda")
    facts = {}
    sampler = None
    if cfg.rare_class_sampling:  # source images drawn by class (counted once from the label files, cached)
        from ..data import data_dir
        from ..data.rcs import RareClassDataSampler, RareClassSampler

        check_rare_class_sampling(task)
        stats = src["train"].class_counts(cfg.limit_train, data_dir(cfg.data_dir) / "rcs", progress=dist.is_main)
        rcs = RareClassSampler.from_counts(stats)
        n = min(len(src["train"]), cfg.limit_train or len(src["train"]))
        sampler = RareClassDataSampler(rcs, n // W, seed=cfg.seed, rank=r, world_size=W)
        facts["rare_class_sampling"] = rcs.class_table(src.classes)
    loaders = {"source": src["train"].loader(b, True, seed=cfg.seed, limit=cfg.limit_train, sampler=sampler,
                                             **task.train_options(cfg, True), **common)}
    if method.uses_target:
        loaders["target"] = tgt["train"].loader(b, True, seed=cfg.seed + 1, limit=cfg.limit_train,
                                                **task.train_options(cfg, method.uses_target_labels), **common)
    tgt_split = "test" if "test" in tgt.splits else "val"
    size = "native" if cfg.resize == "native" else "base"
    eval_opts = task.eval_options(cfg.eval_size or size, cfg.image_size, transform=cfg.photo_transform)
    evals = {}
    for split, dom, name in (("source_val", src, "val"), ("source_test", src, "test"), ("target_test", tgt, tgt_split)):
        if name in dom.splits and len(dom[name]) and getattr(dom[name], "labelled", True):
            evals[split] = dom[name].loader(max(1, b // 2), False, seed=cfg.seed, limit=cfg.limit_eval,
                                            **eval_opts, **common)
    facts["target_scored_split"] = tgt_split
    if task.dense:
        facts["resize"] = "native" if cfg.resize == "native" else "base"
    # how the scored images were fed: recorded in model.pt too, so that evaluate and select feed them the same way
    facts.update({"eval_size" if k == "size" else k: v for k, v in eval_opts.items() if k in ("size", "image_size")})
    if not task.dense:
        facts["photo_transform"] = cfg.photo_transform
    log = []
    for d, dom in (("source", src), ("target", tgt)):
        if dom.pair_check is not None:
            facts.setdefault("data_check", {})[d] = dom.pair_check.counts()
            log += [f"{d}: {line}" for line in dom.pair_check.log_lines()]
        if dom.protocol:
            facts.setdefault("protocol", {})[d] = dom.protocol
        if dom.skipped:
            facts.setdefault("skipped_files", {})[d] = len(dom.skipped)
            log += [f"{d}: {path}: skipped: {why}" for path, why in dom.skipped]
    return StreamedSource(src, tgt, facts, "\n".join(log) + "\n" if log else None, loaders=loaders, evals=evals,
                          device=device, reduce=lambda t: all_sum(t, dist), crop=cfg.crop_size,
                          image_size=facts.get("image_size"))
