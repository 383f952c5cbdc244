"""Run directories: exact resume after an interrupt or a crash, refusing to mix configs, bad input."""

import json

import pytest
import torch

from nclab import predict, simulate
from nclab.ufm import make_config
from nclab.ufm.presets import PRESETS, preset_config

KW = dict(counts=[3, 2, 2], depth=2, widths=4, lambda_w=0.01, lambda_h=0.01, bias=True, init_std=0.5, steps=600,
          snapshot_every=50, checkpoint_every=100)
LR = {"sgd": 0.1, "adam": 0.01, "lbfgs": 1.0}


def same_weights(a, b):
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert wa["step"] == wb["step"]
    assert all(torch.equal(x, y) for x, y in zip(wa["weights"], wb["weights"]))
    assert torch.equal(wa["H"], wb["H"]) and torch.equal(wa["bias"], wb["bias"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
def test_interrupted_run_resumes_to_identical_result(tmp_path, optimizer):
    kw = dict(KW, optimizer=optimizer, lr=LR[optimizer])
    full = simulate(**kw, out=tmp_path / "full")
    stop_at = 250 if optimizer != "lbfgs" else 50

    def stop(row):
        if row["step"] == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(**kw, out=tmp_path / "part", callback=stop)
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == stop_at
    with pytest.raises(ValueError, match="--resume"):
        simulate(**kw, out=tmp_path / "part")
    resumed = simulate(**kw, out=tmp_path / "part", resume=True)
    assert resumed.status == full.status and resumed.step == full.step
    same_weights(tmp_path / "full", tmp_path / "part")
    assert (tmp_path / "full" / "metrics.csv").read_bytes() == (tmp_path / "part" / "metrics.csv").read_bytes()
    env = json.loads((tmp_path / "part" / "environment.json").read_text())
    assert len(env["previous"]) == 1  # both sessions recorded


def test_crash_between_checkpoints_resumes_from_last_checkpoint(tmp_path):
    full = simulate(**KW, out=tmp_path / "full")

    def crash(row):
        if row["step"] == 350:  # rows up to 350 written, last checkpoint at 300
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        simulate(**KW, out=tmp_path / "part", callback=crash)
    assert torch.load(tmp_path / "part" / "checkpoint.pt")["step"] == 300
    resumed = simulate(**KW, out=tmp_path / "part", resume=True)
    assert resumed.step == full.step == 600
    same_weights(tmp_path / "full", tmp_path / "part")
    assert (tmp_path / "full" / "metrics.csv").read_bytes() == (tmp_path / "part" / "metrics.csv").read_bytes()


def test_finished_run_is_loaded_not_rerun(tmp_path):
    a = simulate(**KW, out=tmp_path / "r")
    b = simulate(**KW, out=tmp_path / "r", resume=True)
    assert b.extra.get("reused") and b.step == a.step and b.history == a.history
    assert all((x == y).all() for x, y in zip(a.weights, b.weights))


def test_run_directory_with_another_config_is_refused(tmp_path):
    simulate(**dict(KW, steps=100), out=tmp_path / "r")
    with pytest.raises(ValueError, match=r"another config \(lr: 0.1 -> 0.05\)"):
        simulate(**dict(KW, steps=100, lr=0.05), out=tmp_path / "r")
    with pytest.raises(ValueError, match="another config"):
        simulate(**dict(KW, steps=100, lr=0.05), out=tmp_path / "r", resume=True)
    r = simulate(**dict(KW, steps=100, lr=0.05), out=tmp_path / "r", overwrite=True)
    assert r.status == "complete"
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["lr"] == 0.05
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        simulate(**dict(KW, steps=10), out=tmp_path / "file")


def test_run_directory_contents(tmp_path):
    r = simulate(**KW, out=tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.json", "environment.json", "metrics.csv", "summary.json", "checkpoint.pt", "weights.pt",
            "prediction.json"} <= files
    assert not [n for n in files if n.endswith(".tmp")]
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["kind"] == "ufm-simulation" and cfg["nclab_version"]
    assert make_config(**cfg["config"]) == r.config  # saved verbatim: rebuilds the same config
    env = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["threads_used"] >= 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["step"] == 600 and summary["prediction"]["objective"] == pytest.approx(
        predict(r.config.problem).objective)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(lr=0), "lr must be > 0"),
        (dict(lr=-0.1), "lr must be > 0"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=2.5), "steps must be a positive integer"),
        (dict(snapshot_every=0), "snapshot interval"),
        (dict(momentum=1.0), "momentum must be in"),
        (dict(optimizer="rmsprop"), "optimizer must be one of"),
        (dict(schedule="step"), "needs milestones"),
        (dict(schedule="step", milestones=[5, 3]), "increasing"),
        (dict(dtype="float16"), "float32 or float64"),
        (dict(device="tpu"), "device must be"),
        (dict(init_std=0), "init_std must be > 0"),
        (dict(lr=float("nan")), "finite"),
        # the problem: the same errors as nclab.predict
        (dict(counts=[5]), "at least K = 2"),
        (dict(lambda_w=-1.0), "lambda_w must be a finite number > 0"),
        (dict(widths=[4, 4, 4]), "widths has 3 values but depth M = 2"),
    ],
)
def test_bad_input_is_one_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate(**{**KW, **kw})


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        simulate(**KW, device="cuda")


def test_presets_are_the_paper_settings():
    assert set(PRESETS) == {"paper-balanced-of", "paper-balanced-etf", "paper-imbalanced-gof"}
    c = preset_config("paper-imbalanced-gof", 6)
    assert c.counts == (200, 100, 50, 50) and c.widths == (64,) * 6 and c.lambda_w == (5e-4,) * 6
    assert (c.optimizer, c.lr, c.momentum, c.steps, c.init_std, c.snapshot_every) == ("sgd", 0.1, 0.9, 30000, 0.1,
                                                                                      100)
    assert predict(c.problem).geometry == "general orthogonal frame"
    assert predict(preset_config("paper-balanced-etf", 3).problem).geometry == "simplex ETF"
    assert predict(preset_config("paper-balanced-of", 9).problem).geometry == "orthogonal frame"
    assert preset_config("paper-balanced-of", 1, per_class=5, steps=10).counts == (5, 5, 5, 5)


def test_ctrl_c_stops_at_a_step_boundary_and_resumes(tmp_path):
    """A real SIGINT only sets a flag: the run stops after the current chunk, checkpointed, then resumes exactly.
    The test sets Python's own Ctrl-C handler itself: under nohup or in a background job SIGINT is inherited
    ignored."""
    import os
    import signal

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        full = simulate(**KW, out=tmp_path / "full")

        def ctrl_c(row):
            if row["step"] == 150:
                os.kill(os.getpid(), signal.SIGINT)

        with pytest.raises(KeyboardInterrupt):
            simulate(**KW, out=tmp_path / "part", callback=ctrl_c)
        assert torch.load(tmp_path / "part" / "checkpoint.pt")["step"] == 150
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
        resumed = simulate(**KW, out=tmp_path / "part", resume=True, progress=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert resumed.step == full.step
    same_weights(tmp_path / "full", tmp_path / "part")
    assert (tmp_path / "full" / "metrics.csv").read_bytes() == (tmp_path / "part" / "metrics.csv").read_bytes()
