"""``dalab predict --checkpoint model.pt PATH...``: label and confidence per image."""

from __future__ import annotations

import json
import sys

from ..data.images import find_images
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
    from ..tasks import get_task
    from ..training import load_model, resolve_device

    device = resolve_device(args.device)
    model, config = load_model(args.checkpoint, device)  # bad checkpoint: one line, nothing predicted
    task = get_task(config.get("task"))
    files, errors = [], []
    for p in args.paths:
        try:
            files.extend(find_images([p]))
        except DalabError as e:
            errors.append((p, str(e)))
    rows, bad = task.predict_files(model, config, files, args.out_dir)
    errors.extend(bad)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "predictions": rows,
                          "errors": [{"path": str(p), "error": m} for p, m in errors]}, indent=2))
    else:
        for r in rows:
            print(task.prediction_line(r))
    sys.stdout.flush()
    for _, msg in errors:
        sys.stderr.write(f"dalab: error: {msg}\n")
    return 2 if errors else 0
