"""The two-moons toy: DANN aligns the rotated target and beats the standard network on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dalab.cli.main import main
from dalab.errors import DalabError
from dalab.toy.moons import MoonsConfig, ShallowDANN, make_moons_pair, pca2, rotate, run_moons

FAST = dict(n=200, steps=600, grid=60)


def test_rotation_keeps_distances_and_the_angle():
    x = np.random.default_rng(0).normal(size=(50, 2))
    r = rotate(x, 35.0, centre=np.zeros(2))
    assert np.allclose(np.linalg.norm(r, axis=1), np.linalg.norm(x, axis=1))
    a0, a1 = np.arctan2(x[:, 1], x[:, 0]), np.arctan2(r[:, 1], r[:, 0])
    assert np.allclose(np.rad2deg(np.angle(np.exp(1j * (a1 - a0)))), 35.0)


def test_moons_pair_shapes_and_shift():
    xs, ys, xt, yt = make_moons_pair(100, 0.1, 35.0, seed=0)
    assert xs.shape == xt.shape == (100, 2) and set(ys) == set(yt) == {0, 1}
    assert np.allclose(xs.mean(0), xt.mean(0), atol=0.15)            # rotated about the source centre
    assert abs(np.cov(xs.T)[0, 1] - np.cov(xt.T)[0, 1]) > 0.1        # ... but oriented differently


def test_shallow_net_shapes_and_grl():
    m = ShallowDANN(15)
    x = torch.randn(7, 2, requires_grad=True)
    assert m(x).shape == (7, 2) and m.features(x).shape == (7, 15)
    m.grl.lambd = 1.0
    f = m.features(x)
    m.domain_logits(f).sum().backward()
    g_rev = m.hidden.weight.grad.clone()
    m.zero_grad()
    m.domain(m.features(x)).sum().backward()
    assert torch.allclose(g_rev, -m.hidden.weight.grad)              # the GRL flips the sign


def test_dann_beats_the_standard_network_on_the_target():
    r = run_moons(MoonsConfig(**FAST))
    std, dann = r.models
    assert std.name == "standard" and dann.name == "dann"
    assert std.source_acc > 0.95 and dann.source_acc > 0.95
    assert dann.target_acc > std.target_acc + 0.05          # 0.87 vs 0.78 here; 0.93 vs 0.65 at the defaults
    assert std.prob.shape == (60, 60) and 0 <= std.prob.min() and std.prob.max() <= 1
    assert dann.feats_2d.shape == (400, 2)
    again = run_moons(MoonsConfig(**FAST))
    assert again.models[1].target_acc == dann.target_acc               # deterministic


def test_pca2_orders_by_variance():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(300, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    p = pca2(f)
    assert p.shape == (300, 2) and p[:, 0].var() > p[:, 1].var() > 1.0


def test_bad_config_is_refused():
    with pytest.raises(DalabError, match="--n must be >= 4"):
        MoonsConfig(n=2).validate()
    with pytest.raises(DalabError, match="bad --lr"):
        MoonsConfig(lr=float("nan")).validate()


def test_cli_writes_figure_and_json(tmp_path, capsys):
    out = tmp_path / "moons"
    assert main(["toy", "moons", "--out", str(out), "--n", "100", "--steps", "200"]) == 0
    png = (out / "moons.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    s = json.loads((out / "moons.json").read_text())
    assert set(s["models"]) == {"standard", "dann"} and s["config"]["angle"] == 35.0
    assert "target acc" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["toy", "moons", "--out", str(tmp_path / "file"), "--steps", "1"]) == 2
