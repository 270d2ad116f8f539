"""The benchmark scripts under bench/ run, and both sides train the same network."""

from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import throughput as mod

    return mod


@pytest.mark.parametrize("network", ["default", "ganin"])
def test_throughput_bench_runs_both_sides_on_the_same_network(tiny_data, throughput, network, monkeypatch):
    built = []
    import naive

    real = naive.DANNNet

    def spy(**kw):
        built.append(kw)
        return real(**kw)

    monkeypatch.setattr(naive, "DANNNet", spy)
    r = throughput.bench_device("cpu", steps=3, batch=16, data_dir=str(tiny_data), network=network)
    assert r["network"] == network and r["naive_img_s"] > 0 and r["dalab_img_s"] > 0 and r["inference_img_s"] > 0
    assert r["speedup"] == pytest.approx(r["dalab_img_s"] / r["naive_img_s"])
    want_bn = network == "default"
    assert built and all(kw["batch_norm"] is want_bn for kw in built)
    m = real(**built[-1])
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) is want_bn
