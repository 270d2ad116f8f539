"""--jobs: independent runs in parallel processes; failures recorded, the rest go on, re-runs skip."""

import json

from dalab.training import TrainConfig
from dalab.training.pool import Job, run_parallel


def test_parallel_runs_record_failures_and_skip_finished(tiny_data, tmp_path):
    base = dict(epochs=1, batch_size=32, data_dir=str(tiny_data), precision="fp32", device="cpu")
    jobs = [
        Job("good", TrainConfig(method="dann", seed=1, **base), tmp_path / "good"),
        Job("diverges", TrainConfig(method="dann", lr=1e6, lr_schedule="constant", **base), tmp_path / "div"),
        Job("bad-init", TrainConfig(method="dann", init_from=str(tmp_path / "missing.pt"), **base), tmp_path / "bad"),
    ]
    lines = []
    res = run_parallel(jobs, jobs=2, threads=1, log=lines.append)
    assert res["good"]["status"] == "completed" and 0 <= res["good"]["target_test_acc"] <= 1
    assert res["diverges"]["status"] == "diverged"
    assert res["bad-init"]["status"] == "failed" and "missing.pt" in res["bad-init"]["failure"]
    assert len(lines) == 3
    mtime = (tmp_path / "good" / "summary.json").stat().st_mtime_ns
    again = run_parallel(jobs[:1], jobs=2, threads=1, log=lines.append)
    assert (tmp_path / "good" / "summary.json").stat().st_mtime_ns == mtime  # skipped, not retrained
    assert again["good"] == json.loads((tmp_path / "good" / "summary.json").read_text())
