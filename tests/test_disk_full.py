"""A full disk during a write: one line naming the file, the previous file intact, no temp file left."""

from __future__ import annotations

import errno

import pytest
import torch

from dalab.data.io import atomic_write_json
from dalab.errors import DalabError
from dalab.training.checkpoint import save_atomic

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 4608 vs 4496"


def _torch_save_fills_the_disk(obj, f, *a, **k):
    with open(f, "wb") as fh:
        fh.write(b"PK\x03\x04 half a checkpoint")  # some bytes made it to disk before the space ran out
    raise RuntimeError(TORCH_FULL)


def test_torch_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"format": "x", "w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _torch_save_fills_the_disk)
    with pytest.raises(DalabError) as e:
        save_atomic({"format": "x", "w": torch.zeros(3)}, path)
    msg = str(e.value)
    assert str(path) in msg and "disk full" in msg and "ckpt.pt is unchanged" in msg and "\n" not in msg
    assert e.value.exit_code == 1
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # the temporary file is gone


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_first_write_on_a_full_disk_says_nothing_was_created(tmp_path, monkeypatch, err):
    def full(obj, f, *a, **k):
        raise err

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DalabError, match=r"model\.pt: disk full.*model\.pt was not created"):
        save_atomic({"w": torch.ones(1)}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_enospc_while_writing_a_json_file(tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "summary.json"
    atomic_write_json(path, {"a": 1})
    real_open = builtins.open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return FullFile(f) if "w" in mode and str(file).endswith(".tmp") else f

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(DalabError, match="summary.json is unchanged"):
        atomic_write_json(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_other_errors_pass_through(tmp_path):
    def broken(tmp):
        raise RuntimeError("something else")

    from dalab.data.io import atomic_write

    with pytest.raises(RuntimeError, match="something else"):
        atomic_write(tmp_path / "x", broken)
    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "y", lambda tmp: (_ for _ in ()).throw(PermissionError(errno.EACCES, "no")))
    assert list(tmp_path.iterdir()) == []


def test_dalab_train_on_a_full_disk_is_one_line_and_exit_1(tiny_data, tmp_path, monkeypatch, capsys):
    from dalab.cli.main import main

    monkeypatch.setattr(torch, "save", _torch_save_fills_the_disk)
    out = tmp_path / "run"
    code = main(["train", "--method", "source-only", "--epochs", "1", "--limit-train", "64", "--batch-size", "32",
                 "--precision", "fp32", "--device", "cpu", "--quiet", "--data-dir", str(tiny_data),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("dalab: error: ") and "disk full" in err
    assert "internal error" not in err and "inline_container" not in err
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))
