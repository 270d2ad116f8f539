"""examples/practical.ipynb runs top to bottom and is what examples/make_notebook.py writes.

The notebook runs on the hermetic tiny synthetic caches (``DALAB_DATA`` points the kernel at
them), which checks every API call it makes in under a minute. To run it on the real MNIST /
MNIST-M cache at its own settings (a few minutes on 2 CPU cores), use
``python examples/make_notebook.py --execute --out /tmp/practical.ipynb``: it stops at the first
cell that fails.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import ipykernel  # noqa: F401  (the kernel nbclient starts; these three are in the `test` extra)
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "practical.ipynb"


def _make_notebook_module():
    spec = importlib.util.spec_from_file_location("make_notebook", ROOT / "examples" / "make_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_notebook_is_generated_by_the_script(tmp_path):
    out = tmp_path / "nb.ipynb"
    _make_notebook_module().main(["--out", str(out)])
    assert NOTEBOOK.read_text() == out.read_text(), "run `python examples/make_notebook.py` to refresh it"


def test_notebook_covers_the_practical():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    for needle in ("Question 1", "Question 2", "Question 3", "Question 4", "grad_reverse", "GradientReversal",
                   "ganin_lambda", "DANNNet", "load_domain", '"source-only"', '"no-grl"', "PseudoLabel",
                   "dalab.fit("):
        assert needle in text, needle


def _execute(env: dict, timeout: int) -> nbformat.NotebookNode:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment of this process
    try:
        # iopub_timeout: on a busy 2-core machine a cell's printed output can reach the client after
        # the cell's reply; nbclient waits 4 s for it by default and then drops it without a word
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", iopub_timeout=30,
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb) -> str:
    texts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                texts.append(o.get("text", ""))
            elif "data" in o and "text/plain" in o["data"]:
                texts.append(o["data"]["text/plain"])
    return "\n".join(texts)


def _check_ran(nb):
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    out = _outputs(nb)
    for needle in ("forward : [1.0, -2.0, 3.0]", "backward: [-0.5, -0.5, -0.5]", "source-only", "no GRL",
                   "DANN lambda_max=3.0", "student (+ PL)", "notebook ran in"):
        assert needle in out, needle
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 3  # the domains, the lambda schedule, the lambda sweep


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_tiny_data(tmp_path):
    from conftest import write_tiny_caches

    data = write_tiny_caches(tmp_path / "data")
    nb = _execute({"DALAB_DATA": str(data), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                   "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}, timeout=600)
    _check_ran(nb)
