"""Behaviour of the `nclab` commands on the paths the other CLI tests leave out: resuming train runs from the
folder alone, interrupts and divergence, measure's dump/run edge cases, predict's large-K table and counts
files, simulate's resume overlays and preset overrides, and the shared helpers (status line, output checks)."""

import io
import json
import os
import pathlib

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import nclab
import nclab.cli._runs as runs_mod
from nclab.cli import NclabGroup, _show_error, cli
from nclab.cli._common import _jsonable, check_out_dir, parse_float_list, parse_seeds
from nclab.cli._runs import StatusLine, _seconds, chain, check_run_flags


def nclab_(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    r = nclab_(*args)
    assert r.exit_code == 0, r.output
    return r


def refused(*args) -> str:
    """The one error line of a refused command (exit status 2)."""
    r = nclab_(*args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in r.output
    return lines[-1]


# ------------------------------------------------------------------------------------------------ the group
def test_non_usage_errors_get_no_help_hint():
    buf = io.StringIO()
    _show_error(click.ClickException("disk on fire"), file=buf)
    assert buf.getvalue() == "error: disk on fire\n"


def test_hidden_loaded_commands_are_not_listed():
    group = NclabGroup("nclab")
    group.add_command(click.Command("secret", hidden=True, help="Not for users."))
    text = group.get_help(click.Context(group, info_name="nclab"))
    assert "secret" not in text and "predict" in text and "Closed-form global minimizer" in text


# ------------------------------------------------------------------------------------------------ _common
def test_jsonable_paths_and_other_objects():
    assert _jsonable({"out": pathlib.Path("a/b"), 1: float("inf"), "o": range(2)}) == {
        "out": "a/b", "1": None, "o": "range(0, 2)"}
    assert parse_float_list(None, "--x") is None and parse_seeds(None) is None


def test_check_out_dir_refusals(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--out must be a folder path, got 3"):
        check_out_dir(3)
    deep = tmp_path.joinpath(*["d" * 200] * 21)  # every name is legal, the whole path is over 4096 bytes
    with pytest.raises(ValueError, match=r"--out: the path is \d+ bytes long, more than the 4096 this file"):
        check_out_dir(deep)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # (the tests run as root: access is always granted)
    with pytest.raises(ValueError, match=f"--grams {tmp_path}/new: permission denied, cannot create or write in "
                                         f"{tmp_path}$"):
        check_out_dir(tmp_path / "new", "--grams")


def test_check_out_dir_falls_back_when_the_file_system_says_little(tmp_path, monkeypatch):
    def no_pathconf(path, name):
        raise OSError("pathconf not supported")

    monkeypatch.setattr(os, "pathconf", no_pathconf)
    with pytest.raises(ValueError, match="the name 'xxxxxxxxxxxxxxxxxxxxxxxx'... is 256 bytes long, more than the 255"):
        check_out_dir(tmp_path / ("x" * 256))

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(ValueError, match=f"{tmp_path} is on a read-only file system"):
        check_out_dir(tmp_path / "new")

    def no_statvfs(path):
        raise OSError("no statvfs")

    monkeypatch.setattr(os, "statvfs", no_statvfs)
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"  # nothing known against it


def test_more_than_a_million_seeds_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_seeds("3,0-1000000")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: --seeds: '0-1000000' holds more than 1,000,000 seeds\n"
    assert len(parse_seeds("0-999999")) == 1_000_000


# ------------------------------------------------------------------------------------------------ _runs
def test_run_flag_combinations():
    with pytest.raises(ValueError, match="give --resume or --overwrite, not both"):
        check_run_flags("x", True, True)
    assert refused("train", "--resume", "--overwrite", "--out", "x") == "error: give --resume or --overwrite, not both"
    assert refused("train", "--resume") == "error: --resume needs --out, the run directory to continue"
    assert refused("train", "--depths", "") == ("error: --depths must be a comma-separated list of integers, e.g. 3,4; "
                                               "'' is empty")


@pytest.mark.parametrize("s, text", [(float("nan"), "?"), (0.4, "0 s"), (89, "89 s"), (90, "2 min"),
                                     (5399, "90 min"), (5400, "1.5 h"), (36000, "10.0 h")])
def test_durations_in_words(s, text):
    assert _seconds(s) == text


def test_status_line_reports_progress_and_time_left(monkeypatch):
    clock = iter([100.0, 101.0, 130.0, 140.0])  # start, row 1 (too soon), row 2 (30 s later), row 3 (too soon)
    monkeypatch.setattr(runs_mod.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    status = StatusLine("runs/x", 10, interval=30, stream=out)
    status({"epoch": 1, "objective": 0.5})
    status({"epoch": 4, "objective": 0.125, "nc1_L1": 0.0123456, "train_acc": 1, "note": "text"})
    status({"epoch": 5})
    # 3 epochs done since the first row in 30 s: 10 s per epoch, 6 epochs left
    assert out.getvalue() == ("[runs/x] epoch 4/10 (40%): objective 0.125, nc1_L1 0.01235, train_acc 1; 30 s "
                              "elapsed, ~60 s left\n")


def test_status_line_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("NCLAB_STATUS_SECONDS", "7.5")
    assert StatusLine("x", 1).interval == 7.5


def test_chain_calls_each_callback_in_turn():
    seen = []
    assert chain() is None and chain(None, None) is None
    one = seen.append
    assert chain(None, one) is one
    both = chain(lambda r: seen.append(("a", r)), None, lambda r: seen.append(("b", r)))
    both(1)
    assert seen == [("a", 1), ("b", 1)]


# ------------------------------------------------------------------------------------------------ demo
def test_demo_passes_its_flags_and_exits_130_on_ctrl_c(monkeypatch, tmp_path):
    import nclab.demo

    calls = []

    def fake_demo(out, log, progress):
        calls.append((out, progress))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(nclab.demo, "run_demo", fake_demo)
    ok("demo", "--out", tmp_path / "d", "--progress")
    r = nclab_("demo", "--out", tmp_path / "d", "--no-progress")
    assert calls == [(str(tmp_path / "d"), True), (str(tmp_path / "d"), False)]
    assert r.exit_code == 130 and "interrupted; run the same command again to finish" in r.output


# ------------------------------------------------------------------------------------------------ train
TINY = ["--dataset", "digits", "--counts", "12,11,10", "--test-per-class", "0", "--arch", "mlp", "--mlp-depth", "2",
        "--width", "8", "--epochs", "2", "--dtype", "float64", "--threads", "1", "--lambda-w", "1e-3", "--lambda-h",
        "1e-3", "--no-bias", "--optimizer", "sgd", "--lr", "0.01", "--batch-size", "12", "--no-progress"]


def _summary(d):
    return json.loads((d / "summary.json").read_text())


def test_train_interrupt_then_resume_from_the_folder(tmp_path, monkeypatch):
    """Ctrl-C (here: the status-line callback) after epoch 1 of depth 1: exit 130 with the resume hint; the same
    command with --resume finishes both depths, equal to an uninterrupted run; later resumes from the folder
    alone (with or without --depths) reuse the finished runs; options that change the runs are refused."""
    import nclab.cli.train as train_cli

    class CtrlCAtEpoch1(StatusLine):
        def __call__(self, row):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    out = tmp_path / "d"
    monkeypatch.setattr(train_cli, "StatusLine", CtrlCAtEpoch1)
    r = nclab_("train", *TINY, "--depths", "1,2", "--out", out)
    assert r.exit_code == 130 and f"rerun the same command with --resume (--out {out}) to continue" in r.output
    assert _summary(out / "depth-1")["status"] == "interrupted" and not (out / "depth-2").exists()
    monkeypatch.undo()
    # depth-2 holds no run: the folder alone cannot say what to run, the defaults differ from depth-1's config
    assert "holds a run with another config" in refused("train", "--out", out, "--resume", "--depths", "1,2")
    ok("train", *TINY, "--depths", "1,2", "--out", out, "--resume", "--json")
    plain = nclab.experiments.train(dataset="digits", counts=[12, 11, 10], test_per_class=0, arch="mlp", mlp_depth=2,
                                    width=8, epochs=2, dtype="float64", threads=1, lambda_w=1e-3, lambda_h=1e-3,
                                    bias=False, optimizer="sgd", lr=0.01, batch_size=12, depth=1)
    final = _summary(out / "depth-1")["final"]
    assert final["epoch"] == 2 and final["objective"] == plain.final["objective"]
    assert final["nc1_L1"] == plain.final["nc1_L1"]
    for args in ([], ["--depths", "1,2"]):
        r = ok("train", "--out", out, "--resume", "--no-progress", *args)
        lines = r.output.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == ["M = 1", "M = 2"]
        assert all("complete at epoch 2" in line for line in lines)
    # --depth on a resume: one decay follows the new depth, so the refusal names what differs (not lambda_w's length)
    msg = refused("train", "--out", out, "--resume", "--depth", "3")
    assert "another config" in msg and "depth: 1 -> 3" in msg and "needs one value" not in msg


def test_train_resume_with_per_class(tmp_path):
    out = tmp_path / "pc"
    ok("train", *TINY[4:], "--dataset", "digits", "--per-class", "3", "--epochs", "1", "--out", out)
    assert json.loads((out / "config.json").read_text())["config"]["counts"] == [3] * 10
    r = ok("train", "--out", out, "--resume", "--per-class", "3", "--json")
    assert json.loads(r.output)["status"] == "complete" and json.loads(r.output)["epoch"] == 1


def test_train_divergence_is_reported_and_exit_2(tmp_path):
    r = nclab_("train", *TINY, "--lr", "1e200", "--out", tmp_path / "div")
    assert r.exit_code == 2
    assert "M = 1: diverged at epoch 0" in r.output
    assert "error: diverged: non-finite training loss at epoch 1" in r.output
    assert r.output.strip().splitlines()[-1] == "error: a run diverged (non-finite loss); its last good model is kept"


# ------------------------------------------------------------------------------------------------ measure
def _dump(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("dumps")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [4, 3, 3])
    H = rng.normal(size=(10, 5))
    Hc = H.copy()
    Hc[y == 2] = 0  # class 2: zero features and a zero classifier row: collapsed
    W = rng.normal(size=(3, 5))
    W[2] = 0
    return {"y": y, "H": H,
            "collapsed": _dump(d / "collapsed.npz", H=Hc, y=y, W=W),
            "plain": _dump(d / "plain.npz", H=H, y=y),
            "deep": _dump(d / "deep.npz", H=H, y=y, W1=rng.normal(size=(6, 5)), W2=rng.normal(size=(3, 6))),
            "counts": _dump(d / "counts.npz", H=H, y=y, counts=np.array([4, 3, 2, 1]))}


@pytest.mark.parametrize("key, args, line", [
    ("plain", ["--lambda-w", "1e-3,,1e-3"], "error: --lambda-w must be a comma-separated list of numbers, got "
                                            "'1e-3,,1e-3'"),
    ("plain", ["--lambda-w", "abc"], "error: --lambda-w must be a comma-separated list of numbers, got 'abc'"),
    ("plain", ["--lambda-w=-1"], "error: --lambda-w must be finite and >= 0, got '-1'"),
    ("plain", ["--lambda-w", "inf"], "error: --lambda-w must be finite and >= 0, got 'inf'"),
    ("deep", ["--depth", "3"], "error: --depth 3 but {path} holds 2 head layer(s)"),
    ("deep", ["--lambda-w", "1e-3,1e-3,1e-3", "--lambda-h", "1e-3"],
     "error: --lambda-w needs one value or one per head layer (2), got 3"),
    ("counts", [], "error: {path}: counts has 4 entries for K = 3 classes"),
])
def test_measure_dump_refusals(dumps, key, args, line):
    path = dumps[key]
    assert refused("measure", path, *args) == line.format(path=path)


def test_measure_names_collapsed_classes_and_prints_per_class_rows(dumps):
    out = ok("measure", dumps["collapsed"], "--per-class").output
    assert "collapsed classes (layer 1): [2]" in out
    rows = out.split("per class (layer 1):\n")[1].strip().splitlines()
    assert rows[0].split()[:2] == ["label", "count"]
    assert [r.split()[:2] for r in rows[1:]] == [["0", "4"], ["1", "3"], ["2", "3"]]  # np.bincount(y)


def test_measure_warns_about_classes_without_samples(dumps):
    r = ok("measure", dumps["plain"], "-K", "4")
    assert "warning: dropping 1 class(es) without samples: [3]" in r.output and "K=4 K_eff=3" in r.output


def test_measure_dump_without_weights_against_the_theory(tmp_path):
    """Features at the theory's minimizer (no classifier stored), with --depth and both decays: measured against
    nclab.predict's minimizer their NC2 is 0, against the default frame it is not."""
    p = nclab.predict([3, 2, 2], depth=2, lambda_w=1e-3, lambda_h=1e-3)
    _, H, _ = p.construct()  # H: (d, N), classes in order
    f = _dump(tmp_path / "opt.npz", H=H.T, y=np.repeat([0, 1, 2], [3, 2, 2]))
    theory = json.loads(ok("measure", f, "--depth", "2", "--lambda-w", "1e-3", "--lambda-h", "1e-3", "--json").output)
    frame = json.loads(ok("measure", f, "--json").output)
    assert theory["target"] == "theory" and frame["target"] == "etf"
    assert theory["values"]["nc2_h"] < 1e-9 < 1e-2 < frame["values"]["nc2_h"]


def test_measure_memory_error_is_one_line(dumps, monkeypatch):
    import nclab.cli.measure as measure_mod

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(measure_mod, "_measure", no_memory)
    assert refused("measure", dumps["plain"]) == f"error: not enough memory to measure {dumps['plain']}"


@pytest.fixture(scope="module")
def bias_run(tmp_path_factory):
    """A tiny run with a bias and no test split."""
    out = tmp_path_factory.mktemp("mrun") / "run"
    r = nclab.experiments.train(dataset="digits", counts=[12, 11, 10], test_per_class=0, arch="mlp", mlp_depth=2,
                                width=8, depth=2, epochs=1, dtype="float64", threads=1, lambda_w=1e-3, lambda_h=1e-3,
                                bias=True, batch_size=12, out=out)
    assert r.status == "complete" and r.target == "theory"
    return out


def test_measure_run_export_holds_the_bias_and_no_test_split(bias_run, tmp_path):
    f = tmp_path / "f.npz"
    ok("measure", bias_run, "--export", f)
    saved = torch.load(bias_run / "weights.pt", weights_only=True)["state_dict"]
    np.testing.assert_array_equal(np.load(f)["b"], saved["head.linears.1.bias"].numpy())
    assert refused("measure", bias_run, "--split", "test") == (
        f"error: {bias_run} has no test split (test_per_class = 0); use --split train")


def test_measure_run_export_write_failure_leaves_nothing(bias_run, tmp_path, monkeypatch):
    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", cross_device)
    f = tmp_path / "f.npz"
    line = refused("measure", bias_run, "--export", f)
    assert line == f"error: {bias_run}: cannot write {f}: Invalid cross-device link"
    assert os.listdir(tmp_path) == []  # the temporary file is removed too


def test_measure_run_target_choices_and_prediction_file(bias_run, tmp_path):
    """--target etf is named as chosen; without prediction.json the target is recomputed (same numbers); a
    prediction.json that does not fit the run is refused with what is wrong."""
    import shutil

    etf = json.loads(ok("measure", bias_run, "--target", "etf", "--json").output)
    assert etf["target"] == "etf" and etf["target_note"] == "chosen by --target"
    with_file = json.loads(ok("measure", bias_run, "--json").output)
    copy = tmp_path / "copy"
    shutil.copytree(bias_run, copy)
    (copy / "prediction.json").unlink()
    recomputed = json.loads(ok("measure", copy, "--json").output)
    assert with_file["target"] == recomputed["target"] == "theory"
    for a, b in zip(with_file["layers"], recomputed["layers"]):
        for k, v in a["values"].items():
            assert b["values"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    pred = json.loads((bias_run / "prediction.json").read_text())
    (copy / "prediction.json").write_text(json.dumps({**pred, "layers": pred["layers"][:1]}))
    assert refused("measure", copy) == (f"error: {copy}/prediction.json: not a prediction of this run (1 layers for "
                                        "depth 2); delete it to recompute the target")
    pred["layers"][0]["mean_gram"] = [1.0, 2.0, 3.0]
    (copy / "prediction.json").write_text(json.dumps(pred))
    assert refused("measure", copy) == (f"error: {copy}: the prediction's mean_gram is not a K x K matrix "
                                        "(shape (3,))")


# ------------------------------------------------------------------------------------------------ predict
def test_predict_large_k_table_groups_runs_of_classes():
    balanced = ok("predict", "-K", "30", "-n", "2", "-M", "2").output
    table = balanced.split("    class")[1].splitlines()
    assert table[1].split()[:2] == ["0-29", "2"] and table[1].endswith("kept")
    assert table[2].startswith("(K = 30 classes: one row per run of consecutive classes")
    # 30 alternating runs (200 kept, 5 collapsed) are more than 20 rows: one row per state instead
    counts = ",".join(["200", "5"] * 15)
    alternating = ok("predict", "--counts", counts, "-M", "2", "--lambda-w", "1e-3", "--lambda-h", "1e-3").output
    rows = alternating.split("    class")[1].splitlines()[1:3]
    assert [r.split()[:3] for r in rows] == [["15", "cls", "5"], ["15", "cls", "200"]]
    assert rows[0].endswith("collapsed") and rows[1].endswith("kept") and rows[0].split()[3] == "0"
    assert "(K = 30 classes in 30 runs: one row per state" in alternating


def test_predict_counts_file_refusals(tmp_path):
    missing = tmp_path / "none.txt"
    assert refused("predict", "--counts-file", missing) == f"error: --counts-file {missing}: no such file"
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    assert refused("predict", "--counts-file", bad).startswith(f"error: --counts-file {bad}: not a readable .npy file")
    two_d = tmp_path / "2d.npy"
    np.save(two_d, np.ones((2, 2), dtype=np.int64))
    assert refused("predict", "--counts-file", two_d) == (f"error: --counts-file {two_d}: needs a 1-D array of "
                                                          "integers, got shape (2, 2) dtype int64")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"3, 4 \xe9\n")
    assert refused("predict", "--counts-file", latin).startswith(f"error: --counts-file {latin}: cannot read it as "
                                                                 "text")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    assert refused("predict", "--counts-file", empty) == f"error: --counts-file {empty}: no class counts in it"


def test_predict_grams_dir_listed_in_json(tmp_path):
    doc = json.loads(ok("predict", "-K", "3", "-n", "2", "-M", "1", "--grams", tmp_path / "g", "--json").output)
    written = sorted(pathlib.Path(p).name for p in doc["grams_written"])
    assert written == sorted(os.listdir(tmp_path / "g"))
    assert {"WWt.npy", "HtH.npy", "WH.npy", "layer1_mean_gram.npy"} <= set(written)
    np.testing.assert_allclose(np.load(tmp_path / "g" / "WH.npy"), np.asarray(doc["WH"]), rtol=1e-12, atol=1e-15)


def test_predict_inline_grams_limited_to_20_classes():
    assert refused("predict", "--counts", ",".join(["3"] * 21), "--grams") == (
        "error: --grams prints K x K matrices for K <= 20 (K = 21); use --grams DIR to write them as .npy files "
        "(--json gives their structure)")


# ------------------------------------------------------------------------------------------------ simulate
UFM = ["--classes", "3", "--per-class", "2", "--widths", "4", "-M", "1", "--steps", "4", "--snapshot-every", "2",
       "--no-figures"]


def test_simulate_resume_from_the_folder_with_options_that_agree(tmp_path):
    out = tmp_path / "s"
    first = json.loads(ok("simulate", *UFM, "--out", out, "--json").output)
    assert first["status"] == "complete" and first["step"] == 4
    for extra in (["--classes", "3"], ["--per-class", "2"], ["--depth", "1"], ["--width", "4"], ["--threads", "1"],
                  ["--depth", "1", "--width", "4"], ["--depth", "1", "--lambda-w", "5e-4"]):
        again = json.loads(ok("simulate", "--out", out, "--resume", "--json", "--no-figures", *extra).output)
        assert again["final"] == first["final"] and again["step"] == 4, extra
    msg = refused("simulate", "--out", out, "--resume", "--depth", "2")
    assert "holds a run with another config" in msg and "widths: [4] -> [4, 4]" in msg


def test_simulate_preset_overrides(tmp_path):
    """--classes/--per-class replace the preset's counts; a new optimizer takes its own default lr; --milestones."""
    out = tmp_path / "p"
    ok("simulate", "--preset", "paper-balanced-of", "--classes", "3", "--per-class", "2", "--depth", "1",
       "--optimizer", "adam", "--steps", "2", "--schedule", "step", "--milestones", "1", "--no-figures", "--json",
       "--out", out)
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["counts"] == [2, 2, 2] and cfg["optimizer"] == "adam" and cfg["lr"] == 1e-3
    assert cfg["milestones"] == [1] and cfg["steps"] == 2


def test_simulate_preset_runs_its_depths(tmp_path):
    """Without --depth a preset runs the depths its help names (1, 3, 6, 9), one folder each."""
    out = tmp_path / "pd"
    r = ok("simulate", "--preset", "paper-balanced-of", "--steps", "1", "--snapshot-every", "1", "--width", "4",
           "--no-figures", "--json", "--out", out)
    docs = [json.loads(line) for line in r.output.strip().splitlines()]
    assert [pathlib.Path(d["run_dir"]).name for d in docs] == ["depth-1", "depth-3", "depth-6", "depth-9"]
    for M in (1, 3, 6, 9):
        assert json.loads((out / f"depth-{M}" / "config.json").read_text())["config"]["widths"] == [4] * M


def test_simulate_restarts_json_names_every_run(tmp_path):
    out = tmp_path / "rs"
    r = ok("simulate", *UFM, "--restarts", "2", "--json", "--out", out)
    docs = [json.loads(line) for line in r.output.strip().splitlines()]  # JSON lines only, no "best of" text
    assert [pathlib.Path(d["run_dir"]).name for d in docs] == ["seed-0", "seed-1"]
    best = min(docs, key=lambda d: d["final"]["objective"])
    assert pathlib.Path(best["run_dir"]).name in (out / "restarts.json").read_text()


def test_simulate_default_problem_and_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = json.loads(ok("simulate", "--steps", "1", "--snapshot-every", "1", "--no-figures", "--json").output)
    assert doc["run_dir"].startswith("runs/simulate-") and (tmp_path / doc["run_dir"] / "summary.json").is_file()
    p = nclab.predict([200, 100, 50, 50], depth=1, lambda_w=5e-4, lambda_h=5e-4)  # nclab predict's defaults
    assert doc["predicted_objective"] == pytest.approx(p.objective, rel=1e-12)


@pytest.mark.parametrize("args, line", [
    (["--seeds", "0-1", "--resume"], "error: --resume with --seeds needs --out (the folder of the seed-S runs) and "
                                     "no --overwrite"),
    (["--depths", "1,2", "--widths", "4,4"], "error: --widths fixes the depth; with --depths give one --width for "
                                             "every layer"),
    (["--depths", "1,2", "--lambda-w", "1e-3,2e-3"], "error: --depths needs a single --lambda-w value (per-layer "
                                                     "values fix the depth)"),
    (["--seeds", "0-1", "--restarts", "2"], "error: --seeds trains fresh or resumed seed-S runs from the options "
                                            "given; not with --restarts or a saved single run in --out"),
])
def test_simulate_flag_conflicts(tmp_path, args, line):
    out = [] if "--resume" in args else ["--out", tmp_path / "x"]
    assert refused("simulate", "--steps", "1", *out, *args) == line
    assert not (tmp_path / "x").exists()
