"""A finished run is reused only when its whole recipe matches: settings, method version, method parameters.

A run made by an older version of its method, or with other defaults, is moved aside to
``<run>.stale-<n>/`` and trained again; a run warm-started from a parent replaced that way follows it.
"""

from __future__ import annotations

import json

import pytest

import dalab
from dalab.evaluation.benchmark import SUITES, SuiteEntry, fresh_method_params, method_stale, run_benchmark
from dalab.methods import METHODS, SourceOnly


class FixtureMethod(SourceOnly):
    """Source-only training with one hyper-parameter, ``alpha``, whose default the tests change."""

    name = "fixture-method"
    version = 1

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        self.alpha = float(alpha)


@pytest.fixture
def registry(monkeypatch):
    """A method registry and a suite holding the fixture method (restored after the test)."""
    monkeypatch.setitem(METHODS, FixtureMethod.name, FixtureMethod)
    monkeypatch.setitem(SUITES, "fixture-suite", {
        "source": "mnist", "target": "mnistm", "description": "a fixture suite",
        "entries": [SuiteEntry(FixtureMethod.name)]})
    return monkeypatch


def _common(tiny_data, lines):
    return dict(seeds=1, epochs=1, limit_train=128, limit_eval=64, data_dir=str(tiny_data), precision="fp32",
                device="cpu", progress=False, log=lines.append)


def test_a_changed_default_reruns_the_old_run_instead_of_reusing_it(registry, tiny_data, tmp_path):
    lines: list[str] = []
    common = _common(tiny_data, lines)
    run = tmp_path / FixtureMethod.name / "seed0"
    (row,) = run_benchmark("fixture-suite", out=tmp_path, **common)["rows"]
    assert row["runs_ok"] == 1 and "reused" not in row
    old = (run / "summary.json").read_text()
    assert json.loads(old)["method_params"]["alpha"] == 0.5

    # same recipe: reused, and the table says so with the dalab version that trained it
    s = json.loads(old)
    s["dalab_version"] = "0.7.0"  # as if an older dalab had trained it with the same recipe
    (run / "summary.json").write_text(json.dumps(s))
    res = run_benchmark("fixture-suite", out=tmp_path, **common)
    assert res["rows"][0]["reused"] == 1 and res["rows"][0]["reused_dalab_versions"] == ["0.7.0"]
    assert "| reused |" in res["table"] and "| 1/1 (dalab 0.7.0) |" in res["table"]
    old = (run / "summary.json").read_text()

    # the method's default changes (0.5 -> 0.25): the old run is moved aside, never deleted, and trained again
    class Changed(FixtureMethod):
        def __init__(self, alpha: float = 0.25):
            super().__init__(alpha)

    registry.setitem(METHODS, FixtureMethod.name, Changed)
    lines.clear()
    res = run_benchmark("fixture-suite", out=tmp_path, **common)
    (row,) = res["rows"]
    assert row["runs_ok"] == 1 and "reused" not in row and "| reused |" not in res["table"]
    new = json.loads((run / "summary.json").read_text())
    assert new["method_params"]["alpha"] == 0.25 and new["dalab_version"] == dalab.__version__
    stale = tmp_path / FixtureMethod.name / "seed0.stale-1"
    assert (stale / "summary.json").read_text() == old and (stale / "model.pt").is_file()
    assert any("stale (alpha: 0.5 != 0.25)" in ln and str(stale) in ln for ln in lines)
    assert not any("(reused)" in ln for ln in lines)
    # and the new run, whose recipe now matches, is reused next time
    assert run_benchmark("fixture-suite", out=tmp_path, **common)["rows"][0]["reused"] == 1


def test_a_raised_method_version_reruns_the_old_run(registry, tiny_data, tmp_path):
    lines: list[str] = []
    common = _common(tiny_data, lines)
    run_benchmark("fixture-suite", out=tmp_path, **common)
    registry.setattr(FixtureMethod, "version", 2)
    (row,) = run_benchmark("fixture-suite", out=tmp_path, **common)["rows"]
    assert row["runs_ok"] == 1 and "reused" not in row
    assert (tmp_path / FixtureMethod.name / "seed0.stale-1" / "summary.json").is_file()
    assert any("stale (fixture-method version 1 != 2)" in ln for ln in lines)


def test_method_stale_compares_version_and_parameters_with_defaults_resolved():
    cfg = {"method": "dacs", "method_args": {"augment": False}}
    fresh = fresh_method_params(cfg)
    assert fresh["augment"] is False and fresh["threshold"] == 0.968 and "training" not in fresh
    v = METHODS["dacs"].version
    assert method_stale({"method_version": v, "method_params": {**fresh, "training": False, "gone": 1}}, cfg) == []
    # a summary without a version is version 1: a DACS run of dalab 0.7.0, which had no augmentation
    assert method_stale({"method_params": fresh}, cfg) == [f"dacs version 1 != {v}"]
    no_aug = {k: v for k, v in fresh.items() if k != "augment"}
    assert method_stale({"method_version": v, "method_params": no_aug}, cfg) == ["augment: not recorded != False"]
    assert method_stale({"method_version": v, "method_params": {**fresh, "ema": 0.9}}, cfg) == ["ema: 0.9 != 0.99"]
    assert method_stale({"method_version": v}, cfg) == ["no method parameters recorded"]
    # the schedule settings reach the method as the trainer passes them
    assert fresh_method_params({"method": "dann", "gamma": 5.0})["gamma"] == 5.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_its_version(name):
    cls = METHODS[name]
    assert "version" in vars(cls), f"{cls.__name__} must declare `version` itself, not inherit it"
    assert isinstance(cls.version, int) and cls.version >= 1


def test_dacs_is_version_3_since_its_augmentation_and_the_scaled_blur():
    assert METHODS["dacs"].version == 3 and METHODS["mic"].version == 2 and METHODS["fda"].version == 2


def test_a_run_warm_started_from_a_replaced_parent_is_replaced_too(tiny_data, tmp_path):
    """dann-pl starts from dann's model.pt: when dann is moved aside as stale and trained again, the
    dann-pl run that started from the old dann is moved aside and trained again (not refused)."""
    lines: list[str] = []
    common = {**_common(tiny_data, lines), "methods": ["dann", "dann-pl"]}
    run_benchmark("digits-mnistm", out=tmp_path, **common)
    dann, pl = tmp_path / "dann" / "seed0", tmp_path / "dann-pl" / "seed0"
    s = json.loads((dann / "summary.json").read_text())
    s["method_params"]["gamma"] = 5.0  # as recorded by a dalab whose DANN used another default
    (dann / "summary.json").write_text(json.dumps(s))
    old_pl = (pl / "summary.json").read_text()
    rows = run_benchmark("digits-mnistm", out=tmp_path, **common)["rows"]
    assert [r["runs_ok"] for r in rows] == [1, 1] and not any(r.get("reused") for r in rows)
    assert (tmp_path / "dann" / "seed0.stale-1" / "summary.json").is_file()
    assert (tmp_path / "dann-pl" / "seed0.stale-1" / "summary.json").read_text() == old_pl
    assert any("dann-pl" in ln and "a run moved aside as stale" in ln for ln in lines)
    # both now match their recipes: reused
    assert [r.get("reused") for r in run_benchmark("digits-mnistm", out=tmp_path, **common)["rows"]] == [1, 1]


def test_the_parallel_path_reruns_a_stale_run_too(tiny_data, tmp_path):
    lines: list[str] = []
    common = {**_common(tiny_data, lines), "methods": ["dann"]}
    run_benchmark("digits-mnistm", out=tmp_path, **common)
    run = tmp_path / "dann" / "seed0"
    s = json.loads((run / "summary.json").read_text())
    s["method_params"]["gamma"] = 5.0
    (run / "summary.json").write_text(json.dumps(s))
    (row,) = run_benchmark("digits-mnistm", out=tmp_path, jobs=2, **common)["rows"]
    assert row["runs_ok"] == 1 and "reused" not in row
    assert (run / "worker.log").is_file()  # trained again by a pool worker
    assert json.loads((run / "summary.json").read_text())["method_params"]["gamma"] == 10.0
    assert (tmp_path / "dann" / "seed0.stale-1" / "summary.json").is_file()
