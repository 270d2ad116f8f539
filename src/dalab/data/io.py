"""Atomic writes, file locks and hashes: nothing on disk is ever half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import DiskFullError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only read by setting)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, or torch.save's way of saying so (its zip writer raises a RuntimeError
    such as ``[enforce fail at inline_container.cc:672] . unexpected pos ...``)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    if isinstance(e, RuntimeError):
        msg = str(e)
        return any(s in msg for s in ("unexpected pos", "No space left", "file write failed"))
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the same folder, so the rename is atomic: readers
    see either the old file or the complete new one, never a partial file. A full
    disk is a one-line :class:`~dalab.errors.DiskFullError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give results the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(e):
            was = "is unchanged" if path.exists() else "was not created"
            raise DiskFullError(f"{path}: disk full, the file could not be written; {path.name} {was} "
                                "(writes go to a temporary file first, and it was removed). "
                                "Free some space and run again") from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, _w)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """``obj`` with every float that is not finite (NaN, infinity) replaced by None, recursively through
    dicts, lists and tuples: JSON has no NaN, so an absent score is ``null``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj, indent: int | None = 2) -> str:
    """Strict JSON of ``obj`` (sorted keys; NaN and infinities written as null, see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=True, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json_text(obj) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, _w)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``path`` held for the ``with`` block (``filelock``: flock on
    POSIX, msvcrt on Windows).

    Two processes preparing the same cache serialise on it; the second then finds
    the finished cache and does nothing.
    """
    from filelock import FileLock  # imported here: ``import dalab`` stays light

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield
