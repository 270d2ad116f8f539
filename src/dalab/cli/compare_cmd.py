"""``dalab compare``: images, their labels and several segmentation models' predictions side by side."""

from __future__ import annotations

from .common import HelpFormatter, add_data_dir, nonneg_int, positive_int

EPILOG = """examples:
  dalab compare --model source-only=runs/seg/source-only/seed0/model.pt \\
                --model dacs=runs/seg/dacs/seed0/model.pt --domain scenes-photo --out docs/segmentation.png

Each row: the image, its label map and each model's prediction, colour-coded with Cityscapes' colours.
The target labels only draw the label column; they choose nothing.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="draw segmentation predictions of several models side by side",
                       epilog=EPILOG, formatter_class=HelpFormatter,
                       description="Image, label and each model's predicted map, one row per image.")
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a column: its title and a segmentation model.pt (repeat)")
    p.add_argument("--domain", required=True, help="a segmentation domain, e.g. scenes-photo")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--n", type=positive_int, default=4, help="number of images (rows)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="which images: a random draw with this seed")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    add_data_dir(p)
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    import numpy as np
    import torch

    from ..data import load_domain
    from ..errors import DalabError
    from ..models.inference import predict_logits
    from ..reports.figures import save_segmentation_comparison
    from ..tasks import get_task
    from ..training import load_model, resolve_device

    cols = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise DalabError(f"--model {spec!r}: expected NAME=PATH")
        cols.append((name, path))
    dom = load_domain(args.domain, args.data_dir)
    if not get_task(dom.task).dense:
        raise DalabError(f"--domain {args.domain} is not a segmentation domain")
    device = resolve_device(args.device)
    models = []
    for name, path in cols:  # every model checked before anything is drawn
        model, config = load_model(path, device)
        if not get_task(config.get("task")).dense:
            raise DalabError(f"--model {name}={path}: not a segmentation model")
        models.append((name, model, config))
    split = dom[args.split]
    idx = np.sort(np.random.default_rng(args.seed).choice(len(split), size=min(args.n, len(split)), replace=False))
    x = torch.from_numpy(np.ascontiguousarray(split.x[idx])).permute(0, 3, 1, 2).contiguous()
    preds = {}
    for name, model, config in models:
        bn = "source" if args.domain == config.get("source") else "target"
        preds[name] = predict_logits(model, x, domain=bn).argmax(1).cpu().numpy().astype(np.uint8)
    save_segmentation_comparison(split.x[idx], split.y[idx], preds, args.out, title=dom.description,
                                 class_names=dom.classes)
    print(f"wrote {args.out}")
    return 0
