"""nclab demo end to end at depth 1 (the README's main job, made smaller)."""

import json

from nclab.demo import run_demo
from nclab.report import find_runs


def test_demo_depth_one_writes_theory_runs_and_report(tmp_path):
    lines = []
    page = run_demo(tmp_path / "demo", depths=(1,), log=lines.append, train_epochs=4)
    assert page.exists() and page.read_text().count("<img") >= 3
    theory = json.loads((tmp_path / "demo" / "theory.json").read_text())
    assert theory["paper-imbalanced-gof/M=1"]["geometry"] == "general orthogonal frame"
    assert len(find_runs([tmp_path / "demo"])) == 4  # 3 UFM presets + the digits MLP
    assert any("rel. gap" in line for line in lines) and lines[-1].startswith("done in")
    # a second run reuses every finished run instead of training again
    lines2 = []
    run_demo(tmp_path / "demo", depths=(1,), log=lines2.append, train_epochs=4)
    assert [line for line in lines2 if "M = 1" in line] == [line for line in lines if "M = 1" in line]
