"""Shared CLI pieces: a parser whose errors are one line, and strict value types."""

from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is exactly one line on stderr and exit code 2."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help once: not where the help already speaks of its
    default, and not for None (no value), an empty list or an on/off flag's False."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _int_at_least(lowest: int, what: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if v < lowest:
            raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "an integer >= 0")


def finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s!r}")
    return v


def nonneg_float(s: str) -> float:
    v = finite_float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(s: str) -> float:
    v = finite_float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


# mps (Apple silicon) is resolved like cuda but is untested here: no Mac runs dalab's tests.
DEVICE_HELP = "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"


def split_names(text: str) -> list[str]:
    """A comma-separated list of names, where a comma inside parentheses belongs to its name:
    ``"dacs,target-only (oracle, warm-up)"`` -> ``["dacs", "target-only (oracle, warm-up)"]``."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth <= 0:
            names.append(text[start:i])
            start, depth = i + 1, 0
    names.append(text[start:])
    return [n.strip() for n in names if n.strip()]


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="cache folder (default: $DALAB_DATA or ~/.cache/dalab)")


def print_json(obj) -> None:
    """Strict JSON on stdout: an absent score (NaN) is null."""
    from ..data.io import json_text

    print(json_text(obj))


def fmt_acc(v) -> str:
    """A score in percent; ``n/a`` for None or a number that is not finite."""
    return "  n/a " if v is None or not math.isfinite(v) else f"{100 * v:6.2f}%"
