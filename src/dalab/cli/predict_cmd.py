"""``dalab predict --checkpoint model.pt PATH...``: label and confidence per image."""

from __future__ import annotations

import json
import sys

from ..data.images import find_images, load_images
from ..errors import DalabError
from .common import DEVICE_HELP, HelpFormatter

EPILOG = """examples:
  dalab predict --checkpoint runs/dann/model.pt digit.png photo.jpg
  dalab predict --checkpoint runs/dann/model.pt my_digits/ --json
  dalab predict --checkpoint runs/seg-advent/model.pt street.png --out-dir masks/

Any image mode (grey, palette, RGBA, CMYK, 16-bit, float) and any size is converted to the
model's input (28x28 RGB, bilinear resize, aspect ratio not kept). A folder contributes its
image files (.png, .jpg, ...), recursively and sorted. Output: one line per image,
"PATH<TAB>LABEL<TAB>CONFIDENCE" (softmax probability of the label), or a JSON object with --json.
For a segmentation model, --out-dir DIR is required: each image is resized to the model's
training input size, and DIR/<name>_mask.png receives its predicted label map at the image's
own size, colour-coded with Cityscapes' colours (each line: "PATH<TAB>MASK<TAB>MEAN CONFIDENCE").
A path that cannot be read is reported on stderr by name (one line each) and the others are
still predicted. Exit codes: 0 all predicted, 2 some path was not a readable image (or a bad
checkpoint/flag: nothing predicted).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict the label of image files with a saved model",
                       epilog=EPILOG, formatter_class=HelpFormatter,
                       description="Classify image files or folders with a model.pt written by dalab train.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, help="a model.pt written by dalab train")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object (predictions and errors)")
    p.add_argument("--out-dir", default=None, help="segmentation models: the folder for colour-coded masks")
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    import torch

    from ..models.inference import predict_logits
    from ..training import load_model, resolve_device

    device = resolve_device(args.device)
    model, config = load_model(args.checkpoint, device)  # bad checkpoint: one line, nothing predicted
    size = int((config.get("input") or [3, 28, 28])[-1])
    class_names = config.get("class_names")
    if config.get("task") == "segmentation":
        return _predict_masks(args, model, config)

    files, errors = [], []
    for p in args.paths:
        try:
            files.extend(find_images([p]))
        except DalabError as e:
            errors.append((p, str(e)))
    x, ok, bad = load_images(files, size)
    errors.extend((str(p), msg) for p, msg in bad)

    preds = []
    if len(ok):
        t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        probs = torch.softmax(predict_logits(model, t, domain="target"), dim=1)  # the domain it was adapted to
        conf, label = probs.max(dim=1)
        for path, lab, c in zip(ok, label.tolist(), conf.tolist()):
            row = {"path": str(path), "label": int(lab), "confidence": round(float(c), 6)}
            if isinstance(class_names, (list, tuple)) and lab < len(class_names):
                row["class_name"] = str(class_names[lab])
            preds.append(row)

    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "predictions": preds,
                          "errors": [{"path": str(p), "error": m} for p, m in errors]}, indent=2))
    else:
        for r in preds:
            name = f" ({r['class_name']})" if "class_name" in r else ""
            print(f"{r['path']}\t{r['label']}{name}\t{r['confidence']:.4f}")
    sys.stdout.flush()
    for _, msg in errors:
        sys.stderr.write(f"dalab: error: {msg}\n")
    return 2 if errors else 0


def _predict_masks(args, model, config) -> int:
    """Segmentation: one colour-coded mask PNG per image, written atomically into ``--out-dir``."""
    import io
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from ..data.cityscapes_labels import colorize
    from ..data.io import atomic_write_bytes
    from ..data.mnistm import read_rgb
    from ..models.inference import predict_logits

    if not args.out_dir:
        raise DalabError("--out-dir DIR is required for a segmentation model (the masks are written there)")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise DalabError(f"--out-dir {out}: exists and is not a folder")
    h, w = (int(v) for v in (config.get("input") or [3, 48, 96])[1:])
    files, errors, rows, seen = [], [], [], {}
    for p in args.paths:
        try:
            files.extend(find_images([p]))
        except DalabError as e:
            errors.append((p, str(e)))
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        try:
            img = read_rgb(Path(f))
        except DalabError as e:
            errors.append((str(f), str(e)))
            continue
        x = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), np.uint8)
        t = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
        probs = torch.softmax(predict_logits(model, t, domain="target"), 1)  # (1, K, h, w)
        probs = torch.nn.functional.interpolate(probs, size=img.shape[:2], mode="bilinear", align_corners=False)
        conf, lab = probs[0].cpu().max(0)
        buf = io.BytesIO()
        Image.fromarray(colorize(lab.numpy().astype(np.uint8))).save(buf, format="PNG")
        stem = Path(f).stem
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:  # a/1.png and b/1.jpg: the second gets its own file, never the first's
            stem = f"{stem}_{seen[stem]}"
        mask = out / f"{stem}_mask.png"
        atomic_write_bytes(mask, buf.getvalue())
        rows.append({"path": str(f), "mask": str(mask), "mean_confidence": round(float(conf.mean()), 6)})
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "predictions": rows,
                          "errors": [{"path": str(p), "error": m} for p, m in errors]}, indent=2))
    else:
        for r in rows:
            print(f"{r['path']}\t{r['mask']}\t{r['mean_confidence']:.4f}")
    sys.stdout.flush()
    for _, msg in errors:
        sys.stderr.write(f"dalab: error: {msg}\n")
    return 2 if errors else 0
