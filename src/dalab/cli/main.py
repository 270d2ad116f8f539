"""The ``dalab`` command line. Each sub-command lives in its own module."""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import DalabError
from . import benchmark_cmd, compare_cmd, data_cmd, predict_cmd, select_cmd, study_cmd, toy_cmd, train_cmd
from .common import HelpFormatter, Parser

SUBCOMMANDS = [data_cmd, train_cmd, predict_cmd, compare_cmd, select_cmd, benchmark_cmd, study_cmd, toy_cmd]

EPILOG = """quick start:
  dalab data prepare                          # offline: MNIST + rebuilt MNIST-M
  dalab quickstart                            # source-only vs DANN, prints a table
  dalab train --method dann --out runs/dann   # one run -> summary.json, metrics.jsonl, model.pt
  dalab evaluate --checkpoint runs/dann/model.pt --domain mnistm
  dalab study --preset quick --out runs/study  # the practical's 4 questions -> report.html

Run `dalab COMMAND --help` for each command's options and examples.
"""


def build_parser() -> Parser:
    p = Parser(prog="dalab", description="Unsupervised domain adaptation in PyTorch (DANN and friends).",
               epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"dalab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for mod in SUBCOMMANDS:
        mod.add_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DalabError as e:
        sys.stderr.write(f"dalab: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dalab: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write("dalab: error: out of memory (try --batch-size smaller or --limit-train)\n")
        return 1
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only on request
        if os.environ.get("DALAB_DEBUG"):
            raise
        sys.stderr.write(f"dalab: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                         "(set DALAB_DEBUG=1 for a traceback)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
