"""``nclab sweep --backend ray``: a 2-worker local Ray cluster writes the same run directories as the local
backend (the same metrics, bit for bit). Skipped where ray is not installed."""

import json

import pytest

from nclab.experiments.sweep import run_sweep

ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray) - the Ray backend is not tested")

SPEC = {
    "kind": "simulate",
    "name": "ray2",
    "base": {"classes": 3, "per_class": 2, "widths": 4, "lambda_w": 0.01, "lambda_h": 0.01, "init_std": 0.5,
             "optimizer": "sgd", "steps": 2000, "snapshot_every": 500},
    "grid": {"depth": [1, 2]},
}


def test_two_worker_local_ray_sweep_matches_local_backend(tmp_path):
    assert not ray.is_initialized()
    res = run_sweep(SPEC, tmp_path / "ray", workers=2, backend="ray", report=False)
    assert not ray.is_initialized()  # the sweep started its local Ray and shut it down
    assert res.ok and [e["status"] for e in res.runs] == ["complete", "complete"]
    manifest = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert manifest["backend"] == "ray" and manifest["workers"] == 2
    local = run_sweep(SPEC, tmp_path / "local", workers=2, backend="local", report=False)
    assert local.ok
    for name in ("depth=1", "depth=2"):
        a, b = tmp_path / "ray" / name, tmp_path / "local" / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
        assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    again = run_sweep(SPEC, tmp_path / "ray", workers=2, backend="ray", report=False)  # all finished: no Ray
    assert all(e["reused"] for e in again.runs)
