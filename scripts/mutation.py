"""Mutation testing of the modules whose numbers users trust (mutmut >= 3; not run in CI: too slow).

    pip install -e .[test]                      # pytest, hypothesis, mutmut
    python scripts/mutation.py                  # every group below, one after the other
    python scripts/mutation.py results tracking # some groups
    python scripts/mutation.py --list           # the groups, their modules and test selections

Each group is mutated in its own scratch copy of the checkout (``$TMPDIR/nclab-mutation/<group>``, or
``--work DIR``), so the checkout itself is never touched and groups can run side by side. A group runs only
the tests of its selection against each mutant (mutmut maps every test to the functions it calls, so a
mutant runs only the tests that reach it). Per group this prints killed / survived / no tests / timeout
counts and the kill rate, lists the survivors (``--survivors``), and writes ``<work>/<group>/summary.json``.
Inspect one survivor with ``cd <work>/<group> && mutmut show <name>``. A second run of a group reuses
mutmut's cache for unchanged functions and tests; ``--fresh`` starts over.

Mutants of functions called only at import time (``_FILE_MODE = _file_mode()``) show as survivors: mutmut
switches mutants at call time, after the import. They are listed, and counted, like the others.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# group -> (modules to mutate, test selection)
GROUPS = {
    "results": (["nclab/results.py"], ["tests/test_results.py", "tests/test_run_folder.py",
                                       "tests/test_tensorboard.py"]),
    "snapshot": (["nclab/ufm/snapshot.py"], ["tests/test_ufm_snapshot.py", "tests/test_ufm.py",
                                             "tests/test_mutation_snapshot.py"]),
    "tracking": (["nclab/experiments/tracking.py"], ["tests/test_tracking.py"]),
    "theory": (["nclab/theory/*"], ["tests/test_theory_ce.py", "tests/test_theory_mse.py",
                                    "tests/test_theory_pins.py", "tests/test_fuzz_predict.py",
                                    "tests/test_mutation_theory.py", "tests/test_cov_theory.py",
                                    "tests/test_predict_cli.py", "tests/test_scale_theory.py",
                                    "tests/test_mutation_theory_predict.py",
                                    "tests/test_mutation_theory_structure.py", "tests/test_mutation_theory_misc.py",
                                    "tests/test_ce_imbalanced.py", "tests/test_ce_imbalanced_predict.py",
                                    "tests/test_ce_imbalanced_deep.py", "tests/test_ce_phase.py",
                                    "tests/test_mutation_theory_ce.py", "tests/test_mutation_theory_ce_imbalanced.py",
                                    "tests/test_mutation_theory_ce_solve.py"]),
    "metrics": (["nclab/metrics/*"], ["tests/test_metrics_reference.py", "tests/test_metrics_degenerate.py",
                                      "tests/test_metrics_functional.py", "tests/test_metrics_hooks_theory.py",
                                      "tests/test_fuzz_metrics.py", "tests/test_metrics_dist.py",
                                      "tests/test_cov_metrics.py", "tests/test_metrics_fastpaths.py",
                                      # pairwise.py, io.py and report.py are tested here, at large K and by measure
                                      "tests/test_scale_metrics.py", "tests/test_measure_cli.py",
                                      "tests/test_mutation_metrics_report.py", "tests/test_mutation_metrics_stats.py",
                                      "tests/test_mutation_metrics_io.py", "tests/test_mutation_metrics_pairwise.py",
                                      "tests/test_mutation_metrics_compute.py",
                                      "tests/test_mutation_metrics_checks.py"]),
}

STATUS = ("killed", "survived", "no tests", "timeout", "suspicious", "segfault", "skipped", "caught by type check",
          "not checked")


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


def prepare(group: str, work: pathlib.Path, fresh: bool, rev: str | None = None) -> None:
    modules, tests = GROUPS[group]
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("nclab", "tests", "docs"):  # docs: tests read docs/metrics.md
        if (work / name).exists():
            shutil.rmtree(work / name)
        if rev and name == "nclab":  # the package as committed at ``rev``, the tests of the working tree
            archive = subprocess.run(["git", "archive", rev, name], cwd=ROOT, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        else:
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (work / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
        "\n[tool.mutmut]\n"
        'source_paths = ["nclab"]\n'
        'also_copy = ["docs"]\n'
        f"only_mutate = {_toml_list(modules)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(t for t in tests if (ROOT / t).exists())}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
        'process_isolation = "forkserver"\n'  # torch is not fork-safe after the stats run
    )


def results(work: pathlib.Path) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, capture_output=True,
                         text=True, check=True).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            found.setdefault(m.group(2).strip(), []).append(m.group(1))
    return found


SAMPLES = {1: None, 2: "[02468]", 5: "[05]", 10: "0"}  # last digit of mutmut's per-function mutant number


def run(group: str, work: pathlib.Path, jobs: int, fresh: bool, survivors: bool, only=(), sample: int = 1,
        rev: str | None = None, retest: bool = False) -> dict:
    prepare(group, work, fresh, rev)
    patterns = list(only) or ["*"]
    if SAMPLES[sample]:
        patterns = [f"{pat}__mutmut_*{SAMPLES[sample]}" for pat in patterns]
    names = [] if patterns == ["*"] else patterns  # the selection the counts are restricted to
    run_names = names
    if retest:  # only the survivors of the previous run (after new tests); the counts stay those of every mutant
        previous = json.loads((work / "summary.json").read_text())
        run_names = [n for n in previous["survived"] if not names or any(fnmatch.fnmatch(n, pat) for pat in names)]
        if not run_names:
            print(f"{group}: no survivors to retest")
            return previous
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.time()
    with open(work / "mutmut.log", "w") as log:
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *run_names]
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    found = results(work)
    if names:  # a selection: count only the selected mutants
        found = {k: [n for n in v if any(fnmatch.fnmatch(n, pat) for pat in names)] for k, v in found.items()}
        found = {k: v for k, v in found.items() if v}
    counts = {k: len(v) for k, v in found.items()}
    killed, alive = counts.get("killed", 0) + counts.get("timeout", 0), counts.get("survived", 0)
    summary = {"group": group, "modules": GROUPS[group][0], "tests": GROUPS[group][1], "rc": rc, "selection": names,
               "seconds": round(time.time() - t0), "counts": counts,
               "kill_rate": killed / (killed + alive) if killed + alive else None,
               "survived": found.get("survived", []), "no_tests": found.get("no tests", [])}
    if rc and not killed + alive:  # mutmut failed before testing anything: keep the previous summary
        print(f"{group}: mutmut exit {rc} before any mutant was tested, see {work / 'mutmut.log'}")
        return summary
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rate = "n/a" if summary["kill_rate"] is None else f"{100 * summary['kill_rate']:.1f}%"
    print(f"{group}: killed {counts.get('killed', 0)} (+{counts.get('timeout', 0)} timeouts), survived {alive}, "
          f"no tests {counts.get('no tests', 0)}; kill rate {rate} of tested mutants; {summary['seconds']} s"
          + (f"; mutmut exit {rc}, see {work / 'mutmut.log'}" if rc else ""))
    if survivors:
        for name in summary["survived"] + [f"{n} (no tests)" for n in summary["no_tests"]]:
            print(f"  {name}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="*", help=f"groups to run (default: all): {', '.join(GROUPS)}")
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "nclab-mutation",
                    help="scratch folder (default $TMPDIR/nclab-mutation)")
    ap.add_argument("-j", "--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="parallel mutants")
    ap.add_argument("--fresh", action="store_true", help="discard mutmut's cache of earlier runs")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    ap.add_argument("--only", action="append", default=[], metavar="GLOB",
                    help="mutant names to run (fnmatch, e.g. 'nclab.metrics.functional.*'; repeatable)")
    ap.add_argument("--sample", type=int, choices=sorted(SAMPLES), default=1,
                    help="run a fixed 1/N of the mutants (those whose number ends in given digits)")
    ap.add_argument("--rev", help="mutate nclab/ as committed at this git revision (default: the working tree)")
    ap.add_argument("--retest", action="store_true",
                    help="re-run only the survivors of the group's previous run (after adding tests)")
    ap.add_argument("--list", action="store_true", help="print the groups and exit")
    a = ap.parse_args(argv)
    if a.list:
        for g, (mods, tests) in GROUPS.items():
            print(f"{g}: {' '.join(mods)}  <-  {' '.join(tests)}")
        return 0
    bad = [g for g in a.groups if g not in GROUPS]
    if bad:
        ap.error(f"unknown group(s) {', '.join(bad)}; choose from {', '.join(GROUPS)}")
    failed = 0
    for g in a.groups or list(GROUPS):
        failed |= run(g, a.work / g, a.jobs, a.fresh, a.survivors, a.only, a.sample, a.rev, a.retest)["rc"] != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
