"""dalab imports on machines without POSIX-only modules (Windows), and its cache lock still locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Modules Windows lacks. Setting sys.modules[name] = None makes `import name` raise ImportError.
NO_POSIX = "import sys\nfor m in ('fcntl', 'resource', 'termios', 'pwd', 'grp'):\n    sys.modules[m] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_every_dalab_module_imports_without_posix_only_modules():
    code = NO_POSIX + """
import importlib, pkgutil
import dalab, dalab.data.io, dalab.cli.main
failed = []
for info in pkgutil.walk_packages(dalab.__path__, "dalab."):
    if info.name == "dalab.__main__":  # runs the CLI
        continue
    try:
        importlib.import_module(info.name)
    except Exception as e:
        failed.append(f"{info.name}: {e!r}")
print("FAILED", failed)
print("fcntl loaded:", sys.modules.get("fcntl") is not None)
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert "FAILED []" in r.stdout, r.stdout
    assert "fcntl loaded: False" in r.stdout


def test_cli_runs_without_fcntl():
    r = _python(NO_POSIX + "sys.argv = ['dalab', '--version']\nfrom dalab.cli.main import main\nmain()\n")
    assert r.returncode == 0, r.stderr
    from dalab import __version__

    assert r.stdout.strip() == f"dalab {__version__}"


def test_file_lock_without_fcntl_still_locks(tmp_path):
    # Without fcntl, filelock falls back to a lock file that exists while held.
    code = NO_POSIX + f"""
import warnings
warnings.simplefilter("ignore")
from pathlib import Path
from dalab.data.io import file_lock
p = Path({str(tmp_path / "x.lock")!r})
with file_lock(p):
    print("held", p.exists())
print("released")
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert "held True" in r.stdout and "released" in r.stdout


def test_file_lock_excludes_another_process(tmp_path):
    from dalab.data.io import file_lock

    lock = tmp_path / "cache.lock"
    probe = f"""
from filelock import FileLock, Timeout
try:
    FileLock({str(lock)!r}, timeout=0.2).acquire()
    print("acquired")
except Timeout:
    print("busy")
"""
    with file_lock(lock):
        assert _python(probe).stdout.strip() == "busy"
    assert _python(probe).stdout.strip() == "acquired"


# --device: mps (Apple silicon) is picked by auto after CUDA. No Mac runs these tests, so they mock it.

def _fake_backends(monkeypatch, cuda: bool, mps: bool):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from dalab.training import resolve_device

    _fake_backends(monkeypatch, cuda=True, mps=True)
    assert resolve_device("auto").type == "cuda"
    _fake_backends(monkeypatch, cuda=False, mps=True)
    assert resolve_device("auto").type == "mps"
    _fake_backends(monkeypatch, cuda=False, mps=False)
    assert resolve_device("auto").type == "cpu"


def test_device_mps_is_accepted_when_available_and_refused_in_one_line_otherwise(monkeypatch):
    from dalab.errors import DalabError
    from dalab.training import resolve_device

    _fake_backends(monkeypatch, cuda=False, mps=True)
    assert resolve_device("mps").type == "mps"
    _fake_backends(monkeypatch, cuda=True, mps=False)
    with pytest.raises(DalabError, match="mps.*not available"):
        resolve_device("mps")
    with pytest.raises(DalabError, match="mps"):  # the list of known devices names it
        resolve_device("tpu")
