"""Where caches live: ``--data-dir`` beats ``$DALAB_DATA`` beats ``~/.cache/dalab``."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$DALAB_DATA``, else ``$XDG_CACHE_HOME/dalab`` or ``~/.cache/dalab``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("DALAB_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "dalab"
