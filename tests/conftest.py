import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (descent.py) importable as modules

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (a fuzz failure is then a real regression, not a new draw); run
# `pytest --hypothesis-profile explore` to draw new examples.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")


def _coverage_totals(cov) -> dict[str, list[int]]:
    """Per top-level part of nclab (a subpackage or a module): [statements, missing, branches, missing branches]."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "coverage.json")
        cov.json_report(outfile=path)
        with open(path) as fh:
            files = json.load(fh)["files"]
    parts: dict[str, list[int]] = {}
    for name, data in files.items():
        rel = name.replace(os.sep, "/").split("nclab/", 1)[-1]
        key = rel.split("/", 1)[0] if "/" in rel else "(modules)"
        s = data["summary"]
        row = parts.setdefault(key, [0, 0, 0, 0])
        for i, field in enumerate(("num_statements", "missing_lines", "num_branches", "missing_branches")):
            row[i] += s[field]
    return parts


@pytest.hookimpl(trylast=True)  # after pytest-cov's own table
def pytest_terminal_summary(terminalreporter, config):
    """After pytest-cov has combined its data (`--cov`): line and branch coverage of nclab, per subpackage and
    overall, as separate figures (coverage.py's own "Cover" column mixes the two)."""
    plugin = config.pluginmanager.getplugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    if controller is None or getattr(controller, "cov", None) is None:  # no --cov, or --no-cov
        return
    try:
        parts = _coverage_totals(controller.cov)
    except Exception as exc:  # a report problem must not hide the test results above it
        terminalreporter.write_line(f"coverage summary unavailable: {exc}")
        return

    def pct(covered, total):
        return f"{100.0 * covered / total:5.1f}%" if total else "    -"

    terminalreporter.write_sep("=", "nclab coverage: lines / branches (`coverage report -m` lists the misses)")
    total = [0, 0, 0, 0]
    for key in sorted(parts):
        st, miss, br, brmiss = parts[key]
        total = [a + b for a, b in zip(total, parts[key])]
        terminalreporter.write_line(f"{key:14s} lines {pct(st - miss, st)}  branches {pct(br - brmiss, br)}")
    st, miss, br, brmiss = total
    terminalreporter.write_line(f"{'TOTAL':14s} lines {pct(st - miss, st)}  branches {pct(br - brmiss, br)}")
