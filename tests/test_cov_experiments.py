"""Behaviour of nclab.experiments (config, trainer, distributed, sweep) and nclab.environment on the paths the
other tests leave out: schedules, divergence of the objective, a second Ctrl-C mid-epoch, the progress bar, the
etf target (no prediction), argument errors, sweep-file errors, and the thread/core helpers."""

import hashlib
import json
import os
import signal

import pytest
import torch

import nclab.environment as env
from nclab.experiments import make_train_config, train
from nclab.experiments.config import load_toml
from nclab.experiments.distributed import setup
from nclab.experiments.presets import PRESETS
from nclab.experiments.sweep import SweepSpec, _as_spec, _build_report, expand_sweep, run_name, run_sweep
from nclab.experiments.trainer import Trainer, lr_at

# a tiny float64 run on the embedded digits: 33 training samples, a 2-layer head, ~0.1 s per run
TINY = dict(dataset="digits", counts=[12, 11, 10], test_per_class=0, arch="mlp", mlp_depth=2, width=8, depth=2,
            epochs=2, dtype="float64", threads=1, lambda_w=1e-3, lambda_h=1e-3, bias=False, optimizer="sgd", lr=0.01,
            batch_size=12)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ config
def test_step_schedule_multiplies_by_gamma_every_step_size_epochs():
    cfg = make_train_config(**{**TINY, "schedule": "step", "step_size": 2, "gamma": 0.5, "lr": 0.8, "epochs": 6})
    assert [lr_at(cfg, e) for e in range(6)] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2]  # 0.8 * 0.5 ** (e // 2)


def test_replace_depth_keeps_per_layer_decays_explicit():
    one = make_train_config(**TINY)
    assert one.replace(depth=3).lambda_w == (1e-3,) * 3  # one decay follows the new depth
    two = make_train_config(**{**TINY, "lambda_w": [1e-3, 2e-3]})
    with pytest.raises(ValueError, match=r"lambda_w needs one value or one per head layer \(3\)"):
        two.replace(depth=3)  # per-layer decays do not silently stretch to another depth


@pytest.mark.parametrize("key, value, match", [
    ("lambda_h", True, "lambda_h must be a number, got True"),
    ("momentum", 1, r"momentum must be in \[0, 1\), got 1"),
    ("lambda_w", "1e-3,,2e-3", "empty item in the comma-separated list"),
])
def test_bad_values_are_one_error_naming_the_field(key, value, match):
    with pytest.raises(ValueError, match=match):
        make_train_config(**{**TINY, key: value})


def test_preset_per_layer_decay_follows_a_new_depth(monkeypatch):
    monkeypatch.setitem(PRESETS, "two-layer-test", {**TINY, "lambda_w": [3e-3, 5e-3]})
    assert make_train_config("two-layer-test").lambda_w == (3e-3, 5e-3)
    assert make_train_config("two-layer-test", depth=4).lambda_w == (3e-3,) * 4  # the first layer's value


def test_toml_key_given_in_two_tables_is_refused(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("[model]\ndepth = 2\n[objective]\ndepth = 3\n")
    with pytest.raises(ValueError, match="key 'depth' is given twice"):
        load_toml(f)
    f.write_text("[model]\nmlp-depth = 3\n[objective]\nlambda_h = 0.5\n")
    assert load_toml(f) == {"mlp_depth": 3, "lambda_h": 0.5}


# ------------------------------------------------------------------------------------------------ trainer
def test_train_argument_errors():
    cfg = make_train_config(**TINY)
    with pytest.raises(ValueError, match="give either a TrainConfig or keyword options, not both"):
        train(cfg, epochs=3)
    with pytest.raises(ValueError, match="config must be a TrainConfig, got dict"):
        train(dict(TINY))
    with pytest.raises(ValueError, match="give resume or overwrite, not both"):
        train(cfg, resume=True, overwrite=True)


def test_batch_norm_needs_two_samples_per_batch():
    cfg = make_train_config(**{**TINY, "batch_size": 1})
    with pytest.raises(ValueError, match=r"batches of 1 samples over 1 process\(es\) leave fewer than 2 per process "
                                         r"\(batch norm needs 2\)"):
        Trainer(cfg)
    Trainer(cfg.replace(batch_norm=False))  # without batch norm one sample per batch is fine


def test_objective_divergence_keeps_the_initial_model(tmp_path):
    """Full batch: the epoch's training loss (before the step) is finite, the step explodes the weights, so the
    objective after it is not: diverged, with the model of row 0 (the untrained model), not an exception."""
    cfg = make_train_config(**{**TINY, "batch_size": 0, "lr": 1e200})
    initial = Trainer(cfg).net.state_dict()  # seeded init: the model before any step
    r = train(cfg, out=tmp_path / "run")
    assert r.status == "diverged" and r.epoch == 0 and len(r.history) == 1
    assert r.message.startswith("diverged: non-finite objective at epoch 1;") and "(now 1e+200)" in r.message
    assert _same_state(r.model.state_dict(), initial)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_etf_target_has_no_prediction_and_no_rel_gap(tmp_path):
    r = train(**{**TINY, "target": "etf", "epochs": 1}, out=tmp_path / "run")
    assert r.status == "complete" and r.target == "etf" and r.prediction is None
    assert [row["rel_gap"] for row in r.history] == [None, None]  # no f* to compare with
    assert not (tmp_path / "run" / "prediction.json").exists()
    assert (tmp_path / "run" / "weights.pt").is_file()


def test_second_ctrl_c_mid_epoch_restores_the_last_rows_model():
    """Two SIGINTs during epoch 2's training: the first asks for a stop, the second interrupts at once; the
    trainer goes back to the model of its last metrics row (epoch 1), the same as a 1-epoch run's."""
    cfg = make_train_config(**TINY)
    reference = Trainer(cfg.replace(epochs=1))
    reference.run()
    t = Trainer(cfg)
    sent = []

    def ctrl_c_twice(module, args):
        if module.training and t.epoch == 1 and not sent:  # inside epoch 2's first batch
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    t.net.head.register_forward_pre_hook(ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt):
        t.run()
    assert t.status == "interrupted" and t.epoch == 1 and sent
    assert t.message.startswith("interrupted during epoch 2; kept the model of epoch 1")
    assert _same_state(t.net.state_dict(), reference.net.state_dict())


def test_progress_bar_counts_epochs(capsys):
    t = Trainer(make_train_config(**TINY), progress=True)
    t.run()
    err = capsys.readouterr().err
    assert t.status == "complete" and "2/2 [" in err and "epoch/s" in err and "nc1=" in err


# ------------------------------------------------------------------------------------------------ distributed
def test_cuda_device_without_cuda_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda:0' requested but CUDA is not available"):
        setup("cuda:0")
    d = setup("cpu")
    assert (d.rank, d.world, d.main, d.active) == (0, 1, True, False) and d.broadcast({"a": 1}) == {"a": 1}


# ------------------------------------------------------------------------------------------------ environment
def test_usable_cores_falls_back_to_cpu_count(monkeypatch):
    def no_affinity(pid):
        raise OSError("not supported")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert env.usable_cores() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert env.usable_cores() == 1


@pytest.mark.parametrize("load, idle", [(0.0, 4), (1.4, 3), (1.6, 2), (3.9, 1), (12.0, 1)])
def test_idle_cores_is_cores_minus_load_rounded(monkeypatch, load, idle):
    monkeypatch.setattr(env, "_mask_cores", lambda: 4)
    monkeypatch.setattr(env, "usable_cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert env.idle_cores() == idle
    # choose_threads: an explicit request wins; small work gets one thread; large work the idle cores
    assert env.choose_threads(3, 1e12) == 3
    assert env.choose_threads(0, 1e7) == 1
    assert env.choose_threads(0, 1e7 + 1) == idle


def test_idle_cores_without_load_average(monkeypatch):
    def no_load():
        raise OSError("no /proc/loadavg")

    monkeypatch.setattr(env, "_mask_cores", lambda: 3)
    monkeypatch.setattr(env, "usable_cores", lambda: 3)
    monkeypatch.setattr(os, "getloadavg", no_load)
    assert env.idle_cores() == 3


@pytest.mark.parametrize("sample", [0.0, 0.1])
def test_nclab_cores_caps_what_the_others_leave(monkeypatch, sample):
    """8 CPUs, 2 of them busy with other processes, NCLAB_CORES=2: this process keeps its 2 (the cap applies to
    the idle cores, not to the cores the others' load is taken from)."""
    monkeypatch.setattr(env, "_mask_cores", lambda: 8)
    monkeypatch.setenv("NCLAB_CORES", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 0.0, 0.0))
    monkeypatch.setattr(env, "_busy_cores", lambda s: (2.0, 8))
    assert env.idle_cores(sample) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (7.2, 0.0, 0.0))
    monkeypatch.setattr(env, "_busy_cores", lambda s: (7.2, 8))
    assert env.idle_cores(sample) == 1


def test_environment_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Test GPU {i}")
    info = env.environment()
    assert info["gpu"] == "Test GPU 0" and info["cuda"] == torch.version.cuda and info["torch"] == torch.__version__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "gpu" not in env.environment()


# ------------------------------------------------------------------------------------------------ sweep
SIM = {"classes": 3, "per_class": 2, "widths": 4, "lambda_w": 0.01, "lambda_h": 0.01, "steps": 3}


@pytest.mark.parametrize("doc, match", [
    ([1, 2], "a sweep must be a table of kind, name, base, grid, runs"),
    ({"name": "a/b", "grid": {"seed": [0]}}, "name must be a folder name"),
    ({"name": ".hidden", "grid": {"seed": [0]}}, "name must be a folder name"),
    ({"base": [1], "grid": {"seed": [0]}}, r"\[base\] must be a table of options, got \[1\]"),
    ({"grid": [1]}, r"\[grid\] must be a table of option = \[values\], got \[1\]"),
    ({"grid": {"seed": [0]}, "runs": {"depth": 2}}, r"runs must be an array of tables \(\[\[runs\]\] entries\)"),
    ({"grid": {"seed": [0]}, "runs": [1]}, r"runs must be an array of tables"),
])
def test_malformed_sweep_documents(doc, match):
    with pytest.raises(ValueError, match=match):
        SweepSpec.from_dict(doc)


def test_a_sweep_is_a_spec_dict_or_path():
    with pytest.raises(ValueError, match="a sweep is a SweepSpec, a dict or a path to a TOML file, got int"):
        _as_spec(3)


def test_run_names_of_tables_and_long_names():
    assert run_name({"opt": {"a": 1, "b": [2, 3]}}) == "opt=a-1_b-2_3"
    long = {"counts": list(range(100, 160))}
    full = "counts=" + "_".join(map(str, range(100, 160)))
    assert run_name(long) == full[:110] + "~" + hashlib.sha1(full.encode()).hexdigest()[:8]
    assert len(run_name(long)) == 119


def test_runs_entry_with_a_bad_name_and_duplicate_configs():
    with pytest.raises(ValueError, match=r"\[\[runs\]\] entry 1: name must be a folder name"):
        expand_sweep({"base": SIM, "runs": [{"name": "../up", "seed": 1}]})
    with pytest.raises(ValueError, match="runs 'first' and 'second' have the same configuration"):
        expand_sweep({"base": SIM, "runs": [{"name": "first", "seed": 1}, {"name": "second", "seed": 1}]})


def test_threads_in_base_are_kept():
    runs = expand_sweep({"base": {**SIM, "threads": 2}, "grid": {"seed": [0, 1]}})
    assert [r.options["threads"] for r in runs] == [2, 2]
    runs = expand_sweep({"base": SIM, "grid": {"seed": [0, 1]}})
    assert [r.options["threads"] for r in runs] == [1, 1]  # the default: one thread per worker


def test_run_sweep_refuses_bad_backend_and_bad_output(tmp_path):
    spec = {"base": SIM, "grid": {"seed": [0]}}
    with pytest.raises(ValueError, match="backend must be one of local, ray, got 'mpi'"):
        run_sweep(spec, tmp_path / "s", backend="mpi")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"output {f} exists and is not a directory"):
        run_sweep(spec, f, dry_run=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"output {busy} is a non-empty folder that holds no sweep"):
        run_sweep(spec, busy, dry_run=True)


def test_plan_reads_unfinished_and_unreadable_summaries(tmp_path):
    """A dry run shows each run's state from its summary.json: an interrupted run resumes, a summary without a
    status (or unreadable) leaves the run pending."""
    spec = {"base": SIM, "grid": {"seed": [0, 1, 2]}}
    for name, text in (("seed=0", '{"status": "interrupted", "step": 2}'), ("seed=1", "{}"), ("seed=2", "{oops")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    res = run_sweep(spec, tmp_path, dry_run=True)
    assert [(e["name"], e["status"], e["step"]) for e in res.runs] == [
        ("seed=0", "interrupted", 2), ("seed=1", "pending", None), ("seed=2", "pending", None)]
    assert res.dry_run and not res.ok and not (tmp_path / "sweep.json").exists()


def test_no_finished_runs_no_report(tmp_path):
    assert _build_report([], tmp_path) == (None, "report skipped: no finished runs")
    assert not (tmp_path / "report.html").exists()


def test_unreadable_run_config_stops_the_plan(tmp_path):
    (tmp_path / "seed=0").mkdir()
    (tmp_path / "seed=0" / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"seed=0/config.json is unreadable .*; remove the run directory"):
        run_sweep({"base": SIM, "grid": {"seed": [0]}}, tmp_path, dry_run=True)


def test_option_names_of_builders_with_and_without_a_dataclass():
    from nclab.experiments.sweep import _check_names, _option_names

    def fixed(depth, seed=0):
        return {"depth": depth, "seed": seed}

    def anything(**options) -> dict:
        return options

    assert _option_names(fixed) == {"depth", "seed"}
    assert _option_names(anything) is None  # **options of an unknown type: the builder checks its own names
    _check_names(["whatever"], None, "simulate", "[base]")  # unknown: accepted here, refused (if at all) by it
    with pytest.raises(ValueError, match=r"unknown simulate parameter 'sed' in \[grid\]; did you mean 'seed'\?"):
        _check_names(["sed"], {"depth", "seed"}, "simulate", "[grid]")


def test_report_builder_returning_nothing_keeps_the_default_path(tmp_path, monkeypatch):
    import nclab.report

    monkeypatch.setattr(nclab.report, "build_report", lambda dirs, path: None)
    assert _build_report([tmp_path / "a"], tmp_path) == (tmp_path / "report.html", f"report: {tmp_path}/report.html")
