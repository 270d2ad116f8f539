"""A run folder: created, refused when it would clobber a run, overwritten, resumed; every file
written atomically (a temporary file, then a rename), so a kill at any moment leaves each file
either as it was or complete.

Files: ``summary.json`` (written at the end), ``metrics.jsonl`` (one row per evaluation),
``model.pt`` (the final weights), ``ckpt.pt`` (the resume point after each evaluation), and
``data_check.log`` (the files a data check skipped or repaired, when there are any).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.io import atomic_write_json, atomic_write_text
from ..errors import DalabError
from .checkpoint import CKPT_FORMAT, load_checked, save_atomic, save_model

RUN_FILES = ("summary.json", "metrics.jsonl", "model.pt", "ckpt.pt", "data_check.log")
# settings that may differ between a checkpoint and the run resuming it: where it runs and reads, how
# long it trains, where its weights came from, how files are read
RESUME_FREE = ("device", "data_dir", "epochs", "init_from", "workers")


class RunDir:
    """The folder ``path`` of one run (or nothing at all: ``path`` None writes no file)."""

    def __init__(self, path, overwrite: bool = False, resume: bool = False):
        self.path = Path(path) if path is not None else None
        self.overwrite, self.resume = overwrite, resume

    def __bool__(self) -> bool:
        return self.path is not None

    def open(self, config: dict, defaults: dict) -> dict | None:
        """Check the folder and make it ready; the resume checkpoint to continue from, or None.

        ``config`` is the run's settings and ``defaults`` the settings' defaults (a setting added
        after a checkpoint was written had its default's behaviour then). Refuses a folder holding a
        run unless ``overwrite`` or ``resume``, a checkpoint made with other settings, and one with
        more epochs than asked for."""
        if self.path is None:
            return None
        out = self.path
        if out.exists() and not out.is_dir():
            raise DalabError(f"--out {out}: exists and is not a folder")
        if self.resume and (out / "ckpt.pt").exists():
            ck = load_checked(out / "ckpt.pt", CKPT_FORMAT)
            theirs = {**defaults, **{k: v for k, v in ck["config"].items() if k in config}}
            # channels_last None ("auto"): the memory format the checkpoint's run trained with
            diff = [k for k in config if k not in RESUME_FREE and theirs.get(k) != config[k]
                    and not (k == "channels_last" and config[k] is None)]
            if diff:
                raise DalabError(f"--resume: {out}/ckpt.pt was made with other settings ({', '.join(diff)})")
            done, asked = int(ck["epoch"]), int(config["epochs"])
            if done > asked:
                raise DalabError(f"--resume: {out}/ckpt.pt already has {done} epochs; --epochs {asked} cannot "
                                 f"shorten it (pass --epochs {done} or more)")
            if done < asked:
                # training goes on: the summary and model of the run as it was (e.g. a finished 3-epoch run
                # continued to 6) no longer describe it; the continued run writes new ones at its end
                for f in ("summary.json", "model.pt"):
                    (out / f).unlink(missing_ok=True)
            self._remove_stale_tmp()
            return ck
        existing = [f for f in RUN_FILES if (out / f).exists()]
        if existing and not (self.overwrite or self.resume):
            raise DalabError(f"--out {out} already holds a run ({', '.join(existing)}); "
                             "pass --overwrite to replace it or --resume to continue it")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise DalabError(f"--out {out}: cannot write there ({e.strerror})") from None
        if self.overwrite:
            for f in RUN_FILES:
                (out / f).unlink(missing_ok=True)
        self._remove_stale_tmp()
        return None

    def load_checkpoint(self) -> dict | None:
        """The resume checkpoint, when resuming and there is one (for processes other than the first)."""
        if self.path is None or not self.resume or not (self.path / "ckpt.pt").exists():
            return None
        return load_checked(self.path / "ckpt.pt", CKPT_FORMAT)

    def _remove_stale_tmp(self) -> None:
        """Delete temporary files of a run killed mid-write (see ``atomic_write``); the real files are intact."""
        for f in RUN_FILES:
            for tmp in self.path.glob(f".{f}.*.tmp"):
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing
    def write_metrics(self, history: list[dict]) -> None:
        from ..data.io import json_text

        if self.path is not None:
            atomic_write_text(self.path / "metrics.jsonl", "".join(json_text(r, indent=None) + "\n" for r in history))

    def write_checkpoint(self, state: dict) -> None:
        if self.path is not None:
            save_atomic({"format": CKPT_FORMAT, **state}, self.path / "ckpt.pt")

    def write_model(self, model, config: dict) -> None:
        if self.path is not None:
            save_model(self.path / "model.pt", model, config)

    def write_summary(self, summary: dict) -> None:
        if self.path is not None:
            atomic_write_json(self.path / "summary.json", summary)

    def write_text(self, name: str, text: str) -> None:
        if self.path is not None:
            atomic_write_text(self.path / name, text)


def read_history(ck: dict) -> list[dict]:
    """The metrics rows a checkpoint recorded."""
    return [json.loads(s) for s in ck["history"]]
