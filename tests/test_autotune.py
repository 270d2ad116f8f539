"""``--precision auto`` (training/autotune.py): chosen by measurement, cached, recorded, kept on resume."""

import json

import pytest
import torch

from dalab.training import TrainConfig, Trainer
from dalab.training import autotune


def _cfg(data, **kw):
    base = dict(method="dann", epochs=1, batch_size=32, data_dir=str(data), seed=2, device="cpu",
                limit_train=128, limit_eval=64)
    base.update(kw)
    return TrainConfig(**base)


def _stub(ms: dict, bad=(), calls=None):
    """A measurement stub: the given milliseconds per candidate, losses equal to fp32's except ``bad``."""
    def run(model, method, make_opt, data, batch, device, cands, lr_at, total, seed):
        if calls is not None:
            calls.append(list(cands))
        return {c: {"ms": ms[c], "losses": [3.0 + (1.0 if c in bad else 0.0)] * 8} for c in cands}
    return run


@pytest.fixture(autouse=True)
def measure_even_short_runs(monkeypatch):
    """These runs are a few steps long, which a real run would not measure for (see the short-run test)."""
    monkeypatch.setattr(autotune, "SHORT_RUN", 0)


FAST_BF16_CL = {("fp32", False): 30.0, ("fp32", True): 20.0, ("bf16", False): 25.0, ("bf16", True): 10.0}


def test_the_fastest_agreeing_candidate_is_chosen_and_recorded(tiny_data_copy, monkeypatch):
    calls = []
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL, calls=calls))
    s = Trainer(_cfg(tiny_data_copy), progress=False).fit()
    assert calls == [[("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]]
    assert (s["precision"], s["memory_format"]) == ("bf16", "channels_last")
    assert s["precision_choice"].startswith("measured: bf16 channels_last 10.0 ms, fp32 channels_last 20.0 ms")


def test_a_candidate_whose_loss_disagrees_is_rejected(tiny_data_copy, monkeypatch):
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL, bad={("bf16", True)}))
    s = Trainer(_cfg(tiny_data_copy), progress=False).fit()
    assert (s["precision"], s["memory_format"]) == ("fp32", "channels_last")
    assert "bf16 channels_last 10.0 ms (loss disagrees with fp32: rejected)" in s["precision_choice"]


def test_choose_tolerance_and_non_finite_losses():
    ref = [3.0, 2.9]
    res = {("fp32", False): {"ms": 9.0, "losses": ref},
           ("bf16", False): {"ms": 5.0, "losses": [3.0 + 0.02 + 0.02 * 3.0 + 1e-3, 2.9]},  # just outside 0.02 + 2 %
           ("bf16", True): {"ms": 6.0, "losses": [3.0, float("nan")]},
           ("fp32", True): {"ms": 7.0, "losses": [3.0 + 0.07, 2.9]}}                      # just inside
    best, text = autotune.choose(res)
    assert best == ("fp32", True)
    assert text.count("rejected") == 2


def test_the_cache_is_used_on_the_second_call(tiny_data_copy, monkeypatch):
    calls = []
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL, calls=calls))
    Trainer(_cfg(tiny_data_copy), progress=False).fit()
    s = Trainer(_cfg(tiny_data_copy, seed=3), progress=False).fit()
    assert len(calls) == 1
    assert s["precision"] == "bf16" and s["precision_choice"].startswith("cached: bf16 channels_last 10.0 ms")
    cache = json.loads((tiny_data_copy / autotune.CACHE_FILE).read_text())
    assert cache["format"] == autotune.CACHE_FORMAT and len(cache["choices"]) == 1
    key = json.loads(next(iter(cache["choices"])))
    assert key["method"] == "dann" and key["batch_per_domain"] == 32 and key["torch"] == torch.__version__
    assert key["machine"].startswith("cpu: ") and key["network"]["batch_norm"] is True
    # another method, batch size or network is another entry: measured again
    Trainer(_cfg(tiny_data_copy, batch_size=16), progress=False).fit()
    Trainer(_cfg(tiny_data_copy, method="mcc"), progress=False).fit()
    Trainer(_cfg(tiny_data_copy, batch_norm=False), progress=False).fit()
    assert len(calls) == 4


def test_explicit_flags_skip_the_measurement(tiny_data_copy, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("measured although --precision was set explicitly")
    monkeypatch.setattr(autotune, "measure_run", fail)
    s = Trainer(_cfg(tiny_data_copy, precision="fp32"), progress=False).fit()
    assert (s["precision"], s["memory_format"]) == ("fp32", "channels_last")
    assert s["precision_choice"].startswith("explicit: --precision fp32")
    s = Trainer(_cfg(tiny_data_copy, precision="bf16", channels_last=False), progress=False).fit()
    assert (s["precision"], s["memory_format"]) == ("bf16", "NCHW")
    # an explicit memory format with precision auto: only the precisions are timed
    calls = []
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL, calls=calls))
    s = Trainer(_cfg(tiny_data_copy, channels_last=False), progress=False).fit()
    assert calls == [[("fp32", False), ("bf16", False)]] and s["memory_format"] == "NCHW"


def test_resume_reuses_the_recorded_choice(tiny_data_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL))
    out = tmp_path / "run"
    Trainer(_cfg(tiny_data_copy), out, progress=False).fit()
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert ck["speed_choice"]["precision"] == "bf16" and ck["speed_choice"]["channels_last"] is True
    (tiny_data_copy / autotune.CACHE_FILE).unlink()  # neither the cache ...

    def fail(*a, **k):
        raise AssertionError("a resumed run measured again")
    monkeypatch.setattr(autotune, "measure_run", fail)  # ... nor a new measurement decides
    s = Trainer(_cfg(tiny_data_copy, epochs=2), out, progress=False, resume=True).fit()
    assert s["epochs_done"] == 2
    assert (s["precision"], s["memory_format"]) == ("bf16", "channels_last")
    assert s["precision_choice"].startswith("resumed: as recorded in ckpt.pt (measured: bf16 channels_last")


def test_measuring_leaves_the_run_bit_identical_to_the_explicit_choice(tiny_data_copy, tmp_path):
    """The real measurement (copies of the model, method and optimiser, RNG restored) changes nothing:
    the run equals one given the chosen precision and memory format explicitly, weight for weight."""
    a = Trainer(_cfg(tiny_data_copy, method="fixmatch"), tmp_path / "auto", progress=False).fit()
    assert a["precision_choice"].startswith("measured: ")
    assert all(f"{p} {m}" in a["precision_choice"] for p in ("fp32", "bf16") for m in ("NCHW", "channels_last"))
    b = Trainer(_cfg(tiny_data_copy, method="fixmatch", precision=a["precision"],
                     channels_last=a["memory_format"] == "channels_last"), tmp_path / "explicit", progress=False).fit()
    assert a["target_test_acc"] == b["target_test_acc"]
    wa = torch.load(tmp_path / "auto" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "explicit" / "model.pt", weights_only=True)["state_dict"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_an_unwritable_cache_is_only_noted(tiny_data_copy, monkeypatch):
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL))
    (tiny_data_copy / "a-file").write_text("")
    monkeypatch.setattr(autotune, "CACHE_FILE", "a-file/speed.json")  # its folder is a file: cannot be written
    s = Trainer(_cfg(tiny_data_copy), progress=False).fit()
    assert s["precision"] == "bf16" and "not cached" in s["precision_choice"]


@pytest.mark.parametrize("bad", ["maybe", 1])
def test_bad_channels_last(bad):
    from dalab.errors import DalabError
    with pytest.raises(DalabError, match="channels_last"):
        TrainConfig(channels_last=bad).validate()


def test_resuming_a_checkpoint_without_a_recorded_choice_measures_once_and_says_so(tiny_data_copy, tmp_path,
                                                                                    monkeypatch):
    """A checkpoint written before the choice was recorded (config channels_last True, no speed_choice):
    the memory format it trained with is kept, the precision is measured and the summary says why."""
    from dalab.training.checkpoint import CKPT_FORMAT, load_checked, save_atomic

    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL))
    out = tmp_path / "run"
    Trainer(_cfg(tiny_data_copy), out, progress=False).fit()
    ck = load_checked(out / "ckpt.pt", CKPT_FORMAT)
    ck.pop("speed_choice")
    ck.pop("sha256", None)
    ck["config"]["channels_last"] = True
    save_atomic(ck, out / "ckpt.pt")
    calls = []
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL, calls=calls))
    s = Trainer(_cfg(tiny_data_copy, epochs=2), out, progress=False, resume=True).fit()
    assert calls == [[("fp32", True), ("bf16", True)]]
    assert (s["precision"], s["memory_format"]) == ("bf16", "channels_last")
    assert "the checkpoint does not record the precision it trained with" in s["precision_choice"]


def test_runs_started_together_measure_once(tiny_data_copy):
    """Two processes resolving the same key at once: one measures, the other reads its result."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import time, torch
        from pathlib import Path
        from dalab.training import autotune
        def run(cands):
            time.sleep(1.0)
            return {{c: {{"ms": 1.0 + i, "losses": [3.0]}} for i, c in enumerate(cands)}}
        c = autotune.resolve("auto", None, torch.device("cpu"), resume_ck=None, cache_dir=Path({str(tiny_data_copy)!r}),
                             key="k", run=run, batch=8)
        print(c.how.split(":")[0])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outs == ["cached", "measured"]


def test_a_failed_measurement_falls_back_to_fp32_and_says_why(tiny_data_copy, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("cannot copy this network")
    monkeypatch.setattr(autotune, "measure_run", broken)
    s = Trainer(_cfg(tiny_data_copy), progress=False).fit()
    assert (s["precision"], s["memory_format"]) == ("fp32", "NCHW") and s["status"] == "completed"
    assert "could not measure (RuntimeError: cannot copy this network)" in s["precision_choice"]
    assert not (tiny_data_copy / autotune.CACHE_FILE).exists()  # nothing cached


def test_a_short_run_is_not_measured_and_says_why(tiny_data_copy, monkeypatch):
    monkeypatch.setattr(autotune, "SHORT_RUN", 10)

    def fail(*a, **k):
        raise AssertionError("a 4-step run measured 4 candidates for 8 steps each")
    monkeypatch.setattr(autotune, "measure_run", fail)
    s = Trainer(_cfg(tiny_data_copy), progress=False).fit()  # 128 images / 32 = 4 steps
    assert (s["precision"], s["memory_format"]) == ("fp32", "NCHW")
    assert "not measured: the run's 4 steps are fewer than 10 times" in s["precision_choice"]
    # a longer run of the same network measures, and the choice is keyed on the input size too
    calls = []
    monkeypatch.setattr(autotune, "SHORT_RUN", 0)
    monkeypatch.setattr(autotune, "measure_run", _stub(FAST_BF16_CL, calls=calls))
    Trainer(_cfg(tiny_data_copy), progress=False).fit()
    key = json.loads(next(iter(json.loads((tiny_data_copy / autotune.CACHE_FILE).read_text())["choices"])))
    assert len(calls) == 1 and key["input"] == [3, 28, 28]
