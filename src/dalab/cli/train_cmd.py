"""``dalab train``, ``dalab evaluate`` and ``dalab quickstart``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import load_domain
from ..errors import DalabError, TrainingFailure
from ..methods import METHODS
from ..models.nets import ARCHS, INPUT_NORMS
from ..tasks import get_task, headline, miou_over
from ..training import TrainConfig, Trainer, load_model, resolve_device
from ..training.config import TASK_RECIPES
from ..training.schedules import SCHEDULES
from ..training.checkpoint import CKPT_FORMAT, load_checked
from ..training.distributed import env_dist_info
from .common import (DEVICE_HELP, HelpFormatter, add_data_dir, fmt_acc, nonneg_float, nonneg_int,
                     positive_float, positive_int, print_json)

TRAIN_EPILOG = """examples:
  dalab train --method dann --source mnist --target mnistm --epochs 10 --seed 0 --out runs/dann
  dalab train --method source-only --out runs/src --epochs 10
  dalab train --method dann --lambda-max 0.3 --lambda-schedule constant --out runs/dann-l03
  dalab train --method dann --out runs/dann --resume     # continue a killed run
  dalab train --method dann --out runs/dann --resume --epochs 20  # train a finished run for longer
  dalab train --method dann --out runs/dann --tensorboard  # + live curves: tensorboard --logdir runs/dann/tb
  dalab train --method advent --source scenes-game --target scenes-photo --out runs/seg-advent   # segmentation
  dalab train --method dann --source gta5:/data/GTA5 --target cityscapes:/data/cityscapes \
      --crop 512x1024 --eval-size 512x1024 --batch-size 2 --device cuda --out runs/gta-dann   # real data, streamed

Writes OUT/summary.json, OUT/metrics.jsonl (one row per epoch), OUT/model.pt (final
weights, last epoch) and OUT/ckpt.pt (resume point). Target labels are used only by the
oracle target-only; the target test accuracy is measured, never used to pick a model.
The progress bar shows the epoch's running task/domain losses, the domain classifier's
accuracy and the current GRL strength lambda. --tensorboard also writes event files of
every metrics row to OUT/tb/ (needs `pip install tensorboard`).
Exit codes: 0 ok, 1 run failed (e.g. diverged), 2 bad input.
"""


def add_train_args(p, defaults: TrainConfig | None = None) -> None:
    d = defaults or TrainConfig()
    p.add_argument("--method", default=d.method, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--source", default=d.source, help="source domain (labelled)")
    p.add_argument("--target", default=d.target, help="target domain (unlabelled for adaptation)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"passes over the source training set (default {d.epochs}; segmentation: "
                        f"{TASK_RECIPES['segmentation']['epochs']}; with --resume, the checkpoint's)")
    p.add_argument("--seed", type=nonneg_int, default=d.seed)
    p.add_argument("--steps-per-epoch", type=positive_int, default=None, metavar="N",
                   help="steps per epoch (default: one pass over the source set; photos with --backbone: 1000, "
                        "as TLlib's scripts)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images per domain per step (default {d.batch_size}; segmentation: "
                        f"{TASK_RECIPES['segmentation']['batch_size']})")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help=f"default {d.optimizer}; segmentation: {TASK_RECIPES['segmentation']['optimizer']}")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="initial learning rate (default 0.01 for sgd, 0.001 for adam)")
    p.add_argument("--adam-beta1", type=nonneg_float, default=d.adam_beta1,
                   help="with --optimizer adam: first-moment decay (Shu et al. 2018 use 0.5)")
    p.add_argument("--lr-schedule", choices=list(SCHEDULES), default=None,
                   help="ganin: lr / (1 + 10 p)^0.75; inv: lr (1 + 0.001 step)^-0.75 (the photo recipe's); constant "
                        f"(default {d.lr_schedule}; photos with --backbone: inv)")
    p.add_argument("--warmup", type=fraction, default=None, metavar="FRACTION",
                   help="linear learning-rate warm-up over this fraction of the run (default: the method's recipe, "
                        "e.g. daformer 0.0375, else 0)")
    p.add_argument("--rare-class-sampling", action=argparse.BooleanOptionalAction, default=None,
                   help="segmentation: draw source images by class, rare classes more often (DAFormer; default: the "
                        "method's recipe, e.g. on for daformer, else off)")
    p.add_argument("--lambda-max", type=nonneg_float, default=d.lambda_max, help="GRL strength")
    p.add_argument("--lambda-schedule", choices=["ganin", "constant"], default=d.lambda_schedule,
                   help="ganin: lambda_max * (2 / (1 + exp(-gamma p)) - 1)")
    p.add_argument("--gamma", type=nonneg_float, default=d.gamma, help="steepness of the ganin lambda ramp")
    p.add_argument("--weight-decay", type=nonneg_float, default=None,
                   help=f"default {d.weight_decay}; photos with --backbone: 0.001")
    p.add_argument("--arch", choices=ARCHS, default=d.arch,
                   help="network: ganin (Ganin's MNIST net) or conv9 (Shu et al. 2018's 9-conv digit net, the domain "
                        "classifier on its second block, ~22x the compute; for a GPU)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=d.batch_norm,
                   help="batch norm in the feature extractor (--no-batch-norm for Ganin's exact network)")
    p.add_argument("--input-norm", choices=INPUT_NORMS, default=d.input_norm,
                   help="input normalisation: none = (x - 0.5) / 0.5, instance = per image and channel")
    p.add_argument("--bn-stats", choices=["domain", "shared"], default=d.bn_stats,
                   help="with batch norm: running statistics per domain (default) or one shared set (dalab 0.1)")
    p.add_argument("--bn-calibration", type=nonneg_int, default=d.bn_calibration, metavar="N",
                   help="with batch norm: evaluate each domain with its own statistics, recomputed from N "
                        "unlabelled training images per domain (AdaBN); 0 = statistics tracked in training")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                   help="auto: time fp32 and bf16 autocast (x NCHW / channels_last) for a few steps on this run's "
                        "network and keep the fastest whose loss agrees with fp32's (cached per machine)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="memory format (default: measured with --precision auto, else channels_last)")
    p.add_argument("--device", default=d.device, help=DEVICE_HELP)
    p.add_argument("--limit-train", type=positive_int, default=None, help="use the first N training images")
    p.add_argument("--limit-eval", type=positive_int, default=None, help="evaluate on the first N images")
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every, help="epochs between evaluations")
    p.add_argument("--init-from", default=None, help="start from the weights of this model.pt")
    p.add_argument("--ema-decay", type=nonneg_float, default=d.ema_decay,
                   help="evaluate and save an exponential moving average of the weights (e.g. 0.999; 0 = off)")
    p.add_argument("--method-arg", dest="method_args", action="append", default=None, metavar="KEY=VALUE",
                   type=method_arg, help="a method hyper-parameter, repeatable (e.g. --method-arg beta=0.01)")
    p.add_argument("--backbone", default=None, metavar="NAME",
                   help="photos: a torchvision or timm model (e.g. resnet50, timm:convnext_tiny) with the usual "
                        "fine-tuning head; optional extras: pip install torchvision / timm")
    p.add_argument("--pretrained", action="store_true",
                   help="with --backbone: that library's ImageNet weights (downloaded on this machine)")
    p.add_argument("--init", dest="backbone_init", default=None, metavar="PATH",
                   help="with --backbone: start the backbone from your own state dict file")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="S",
                   help="photos read from files: the side of the training crops and evaluation centre crops "
                        "(default 224; a folder of small images is held in memory at 28 instead)")
    p.add_argument("--stream", action="store_true",
                   help="folder:PATH: read the images from the files even when they are small enough for memory")
    p.add_argument("--photo-transform", choices=["standard", "resize"], default=d.photo_transform,
                   help="photos read from files: standard = random resized crops and flips for training (the "
                        "ImageNet recipe); resize = the evaluation view for training too (images already framed)")
    p.add_argument("--strict-files", action="store_true",
                   help="photos read from files: an unreadable file is an error before training (default: skipped, "
                        "counted and listed in OUT/data_check.log)")
    p.add_argument("--crop", dest="crop_size", type=hw_pair, default=None, metavar="HxW",
                   help="domains read from files (gta5:, cityscapes:, synthia:PATH): training crop, e.g. 512x512")
    p.add_argument("--resize", choices=["base", "native"], default=d.resize,
                   help="domains read from files: base = each dataset's size in the papers first (GTA5 1280x720, "
                        "Cityscapes 1024x512, SYNTHIA 1280x760), native = each file's own size")
    p.add_argument("--eval-size", type=hw_pair, default=None, metavar="HxW",
                   help="domains read from files: evaluation input size (default: the size the training crops are "
                        "cut from; scored at the labels' full size)")
    p.add_argument("--workers", type=nonneg_int, default=d.workers,
                   help="domains read from files: DataLoader worker processes per domain")
    add_data_dir(p)


def fraction(s: str) -> float:
    """A number in [0, 1)."""
    v = nonneg_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {v}")
    return v


def hw_pair(s: str) -> list[int]:
    """``HxW`` -> [H, W], both positive."""
    import argparse

    parts = s.lower().split("x")
    try:
        hw = [int(v) for v in parts]
    except ValueError:
        hw = []
    if len(hw) != 2 or min(hw) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW with two positive integers, got {s!r}")
    return hw


def _epochs(args) -> int:
    """--epochs if given; else, resuming, the epochs the run in --out was planned for; else the default."""
    if args.epochs is not None:
        return args.epochs
    ck = Path(args.out) / "ckpt.pt"
    if getattr(args, "resume", False) and ck.is_file():
        planned = load_checked(ck, CKPT_FORMAT).get("config", {}).get("epochs")
        if isinstance(planned, int) and planned > 0:
            return planned
    return _recipe(args).get("epochs", TrainConfig().epochs)


def _recipe(args) -> dict:
    """The defaults of the source domain's task (``Task.recipe``), and of fine-tuning a backbone on photos
    (``backbone_recipe``) with ``--backbone``, for the flags not given."""
    from ..data.domains import domain_task

    task = get_task(domain_task(args.source))
    recipe = dict(task.recipe)
    if getattr(args, "backbone", None):
        recipe.update(getattr(task, "backbone_recipe", {}))
    return recipe


def config_from_args(args) -> TrainConfig:
    d, r = TrainConfig(), _recipe(args)

    def pick(name: str):  # the flag, else the recipe, else TrainConfig's default
        v = getattr(args, name, None)
        return v if v is not None else r.get(name, getattr(d, name))

    return TrainConfig(
        method=args.method, source=args.source, target=args.target, epochs=_epochs(args), seed=args.seed,
        batch_size=pick("batch_size"), optimizer=pick("optimizer"), lr=pick("lr"), lr_schedule=pick("lr_schedule"),
        momentum=pick("momentum"), nesterov=pick("nesterov"), weight_decay=pick("weight_decay"),
        steps_per_epoch=pick("steps_per_epoch"),
        warmup=args.warmup, rare_class_sampling=args.rare_class_sampling,
        adam_beta1=args.adam_beta1,
        lambda_max=args.lambda_max, lambda_schedule=args.lambda_schedule, gamma=args.gamma,
        arch=args.arch, batch_norm=args.batch_norm, input_norm=args.input_norm,
        bn_stats=args.bn_stats, bn_calibration=args.bn_calibration, precision=args.precision,
        channels_last=args.channels_last, device=args.device, limit_train=args.limit_train,
        limit_eval=args.limit_eval, eval_every=args.eval_every, data_dir=args.data_dir,
        init_from=args.init_from, ema_decay=args.ema_decay, crop_size=args.crop_size, eval_size=args.eval_size,
        workers=args.workers, resize=args.resize, backbone=args.backbone, pretrained=args.pretrained,
        backbone_init=args.backbone_init, image_size=args.image_size, strict_files=args.strict_files,
        stream=args.stream, photo_transform=args.photo_transform,
        method_args=dict(args.method_args) if getattr(args, "method_args", None) else None).validate()


def method_arg(s: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value) with VALUE parsed as int, float, bool or kept a string."""
    import argparse

    key, sep, raw = s.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    low = raw.strip().lower()
    if low in ("true", "false"):
        return key.strip().replace("-", "_"), low == "true"
    for conv in (int, float):
        try:
            return key.strip().replace("-", "_"), conv(raw)
        except ValueError:
            pass
    return key.strip().replace("-", "_"), raw


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one method on a source -> target pair", epilog=TRAIN_EPILOG,
                       formatter_class=HelpFormatter, description="Train one run and write its files.")
    add_train_args(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/ckpt.pt if present; with a larger --epochs, train a finished run "
                        "for longer (summary.json records epochs_changed_from)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to OUT/tb/ (needs: pip install tensorboard)")
    p.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="accuracy of a saved model on a domain split",
                       formatter_class=HelpFormatter,
                       description="Accuracy of a model.pt (written by dalab train) on one split of a domain.",
                       epilog="examples:\n  dalab evaluate --checkpoint runs/dann/model.pt --domain mnistm --split test\n"
                              "  dalab evaluate --checkpoint runs/dann/model.pt --domain mnist --json")
    e.add_argument("--checkpoint", required=True, help="a model.pt written by dalab train")
    e.add_argument("--domain", required=True, help="a registered domain (see `dalab data list`)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--eval-size", type=hw_pair, default=None, metavar="HxW",
                   help="a segmentation domain read from files: the input size (default: the one the run evaluated "
                        "at; scored at the labels' full size)")
    e.add_argument("--workers", type=nonneg_int, default=2, help="a domain read from files: DataLoader workers")
    e.add_argument("--classes", default=None, metavar="NAMES",
                   help="segmentation: the mIoU over these classes only, comma-separated names, or synthia16 / "
                        "synthia13 (the SYNTHIA -> Cityscapes conventions); default: every class in the labels")
    add_data_dir(e)
    e.set_defaults(func=run_evaluate)

    q = sub.add_parser("quickstart", help="the main job: source-only and DANN, then a table",
                       formatter_class=HelpFormatter,
                       description="Train source-only and DANN on MNIST -> MNIST-M (one run folder each under\n"
                                   "--out) and print a table of source and target test accuracy.",
                       epilog="examples:\n  dalab quickstart --out runs/quickstart --overwrite\n"
                              "  dalab quickstart --epochs 2 --limit-train 5000   # a quick look on a laptop\n"
                              "  dalab quickstart --methods source-only,dann,no-grl")
    q.add_argument("--out", default="runs/quickstart", help="folder holding one run folder per method")
    q.add_argument("--epochs", type=positive_int, default=TrainConfig().epochs, help="epochs of every run")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of every run")
    q.add_argument("--device", default="auto", help=DEVICE_HELP)
    q.add_argument("--methods", default="source-only,dann", help="comma-separated methods")
    q.add_argument("--overwrite", action="store_true", help="replace finished runs in --out")
    q.add_argument("--limit-train", type=positive_int, default=None, help="use the first N training images")
    q.add_argument("--limit-eval", type=positive_int, default=None, help="evaluate on the first N images")
    add_data_dir(q)
    q.set_defaults(func=run_quickstart)


def _fail_if_diverged(summary: dict) -> None:
    if summary.get("status") == "diverged":
        kept = (f"last good checkpoint (epoch {summary['epochs_done']}) kept" if summary.get("epochs_done")
                else "no epoch finished, so there is no checkpoint")
        raise TrainingFailure(f"run diverged: {summary.get('failure')}; {kept}")


def print_summary(summary: dict, as_json: bool = False) -> None:
    if as_json:
        print_json(summary)
    else:
        task = get_task(summary.get("task"))
        what = f"{task.metric_name} " if task.dense else ""
        print(f"{summary['method']}: {summary['source']} -> {summary['target']}  status={summary['status']}  "
              f"source test {what}{fmt_acc(headline(summary, 'source_test'))}  "
              f"target test {what}{fmt_acc(headline(summary, 'target_test'))}  "
              f"({summary['train_seconds']:.1f} s training, {summary['device']}, {summary['precision']})")


def run_train(args) -> int:
    cfg = config_from_args(args)
    if cfg.method not in METHODS:
        raise DalabError(f"unknown method {cfg.method!r} (known: {', '.join(METHODS)})")
    logger = None
    if getattr(args, "tensorboard", False):
        from ..training.tensorboard import TensorBoardLogger

        logger = TensorBoardLogger(Path(args.out) / "tb", purge=args.overwrite and not args.resume)
    try:
        summary = Trainer(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite, resume=args.resume,
                          logger=logger).fit()
    finally:
        if logger is not None:
            logger.close()
    if env_dist_info().is_main:  # under torchrun every rank ends with the summary: rank 0 prints it
        print_summary(summary, as_json=args.json)
    _fail_if_diverged(summary)
    return 0


def run_evaluate(args) -> int:
    device = resolve_device(args.device)
    model, config = load_model(args.checkpoint, device)
    domain = load_domain(args.domain, args.data_dir)
    task = get_task(getattr(domain, "task", None))
    if task.name != config.get("task", "classification"):
        raise DalabError(f"{args.checkpoint} is a {config.get('task', 'classification')} model and "
                         f"{args.domain} a {task.name} domain")
    split = domain[args.split]
    if getattr(split, "streamed", False):  # read from files (cityscapes:PATH): scored batch by batch
        # fed as the run evaluated (its model.pt says: input size, crops), unless --eval-size asks for another size
        opts = task.eval_options(args.eval_size or config.get("eval_size"), config.get("image_size"),
                                 transform=config.get("photo_transform", "standard"))
        batches = split.loader(2, False, workers=args.workers, **opts)
        size = opts.get("size") or opts.get("image_size")
        shown = {"base": "the dataset's base size", "native": "full size"}.get(size) if isinstance(size, str) else None
        where = (f"input {shown or 'x'.join(map(str, size))}, labels at full size" if task.dense
                 else f"centre crops of {size}x{size}")
    else:
        x, y = split.tensors(device)
        batches = ((x[i:i + task.eval_batch], y[i:i + task.eval_batch]) for i in range(0, len(x), task.eval_batch))
        where = list(y.shape[-2:]) if task.dense else list(x.shape[-2:])
    if len(split) == 0:
        raise DalabError(f"{args.domain}/{args.split}: no images to evaluate")
    if not getattr(split, "labelled", True) or (not getattr(split, "streamed", False) and task.metric == "acc"
                                                and bool((y < 0).any())):
        raise DalabError(f"{args.domain}/{args.split} is unlabelled: it cannot be scored "
                         "(use `dalab predict` for predictions)")
    # a model with per-domain batch-norm statistics uses its source's for the source domain and
    # its target's for any other domain
    bn = "source" if args.domain == config.get("source") else "target"
    sc = task.evaluate(model, batches, int(config.get("num_classes", domain.num_classes)), domain=bn,
                       class_names=domain.classes)
    subset = _class_subset(getattr(args, "classes", None), list(sc.get("per_class_iou") or {}))
    if subset is not None:
        if not task.dense:
            raise DalabError("--classes scores a subset of a segmentation model's classes")
        sc = dict(sc)
        sc["miou"], sc["classes_scored"] = miou_over(sc["per_class_iou"], subset)
    res = {"checkpoint": str(args.checkpoint), "domain": args.domain, "split": args.split,
           "trained_method": config.get("method"), **sc, "resolution": where}
    if task.metric == "acc":
        res["accuracy"] = res.pop("acc")  # the field's name since dalab 0.1
    if subset is not None:
        res["classes"] = subset
    if args.json:
        print_json(res)
        return 0
    score = fmt_acc(sc[task.metric]).strip()
    if not task.dense:
        print(f"{args.domain}/{args.split}: {task.metric_name} {score} on {sc['n']} images")
        return 0
    where = where if isinstance(where, str) else "labels at " + "x".join(map(str, where))
    which = "classes present" if subset is None else f"of the {len(subset)} classes asked for present"
    print(f"{args.domain}/{args.split}: {task.metric_name} {score} over the {sc['classes_scored']} {which} in the "
          f"labels, pixel accuracy {fmt_acc(sc['pixel_acc']).strip()} ({sc['n']} images, {where})")
    if task.dense:
        print(f"| {'class':14s} | IoU     |")
        print(f"|{'-' * 16}|---------|")
        for name, iou in sc["per_class_iou"].items():
            if iou is not None:
                print(f"| {name:14s} | {100 * iou:6.2f}% |")
    return 0


def _class_subset(spec: str | None, names) -> list[str] | None:
    """``--classes``: None (every class), a SYNTHIA preset or comma-separated class names."""
    if spec is None:
        return None
    from ..data.seg_real import SYNTHIA_13_LEFT_OUT, SYNTHIA_ABSENT

    presets = {"synthia16": SYNTHIA_ABSENT, "synthia13": SYNTHIA_13_LEFT_OUT}
    left_out = presets.get(spec.strip().lower())
    if left_out is not None:
        return [c for c in names if c not in left_out]
    chosen = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in names]
    if not chosen or unknown:
        raise DalabError(f"--classes: no class {', '.join(map(repr, unknown)) or repr(spec)} (classes: "
                         f"{', '.join(names)}; or synthia16, synthia13)")
    return chosen


def run_quickstart(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise DalabError(f"unknown method {m!r} (known: {', '.join(METHODS)})")
    rows = []
    for m in methods:
        cfg = TrainConfig(method=m, epochs=args.epochs, seed=args.seed, device=args.device,
                          limit_train=args.limit_train, limit_eval=args.limit_eval, data_dir=args.data_dir)
        print(f"== {m}: mnist -> mnistm, {cfg.epochs} epochs, seed {cfg.seed}", flush=True)
        s = Trainer(cfg, Path(args.out) / m, overwrite=args.overwrite).fit()
        _fail_if_diverged(s)
        rows.append(s)
    print()
    print(f"target: {rows[0]['target_description']}")
    print(f"| {'method':12s} | source test | target test | train s |")
    print(f"|{'-' * 14}|{'-' * 13}|{'-' * 13}|{'-' * 9}|")
    for s in rows:
        print(f"| {s['method']:12s} |   {fmt_acc(s['source_test_acc'])}   |   {fmt_acc(s['target_test_acc'])}   "
              f"| {s['train_seconds']:7.1f} |")
    print(f"\n(runs in {args.out}/; device {rows[0]['device']}, precision {rows[0]['precision']}; "
          "model = last epoch, no target label used)")
    from ..data.io import atomic_write_text

    atomic_write_text(Path(args.out) / "table.json", json.dumps(rows, indent=2))
    return 0
