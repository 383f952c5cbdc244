"""The report page in a real browser: headless Chromium opens it offline (file://), its figures render and
its tables are filled. Skipped without Chromium, except in CI (NCLAB_REQUIRE_CHROMIUM=1), where it must run.
"""

import os
import re
import shutil
import subprocess

import pytest

import nclab
from nclab.report import build_report
from nclab.ufm import make_config

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000"]


def chromium_or_skip() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium not installed (Debian: apt-get install chromium)"
        if os.environ.get("NCLAB_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"NCLAB_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    return path


def browse(chromium, tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_chromium_renders_the_report(tmp_path):
    chromium = chromium_or_skip()
    small = dict(widths=6, lambda_w=5e-3, lambda_h=5e-3, optimizer="lbfgs", steps=40, snapshot_every=10)
    for M in (1, 2):
        nclab.simulate(make_config([8, 4, 2, 2], depth=M, **small), out=tmp_path / "runs" / f"depth-{M}")
    page = build_report(tmp_path / "runs", tmp_path / "report.html")
    url = page.resolve().as_uri()

    dom = browse(chromium, tmp_path, "--dump-dom", url)
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert dom.returncode == 0 and body, dom.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    # metrics, per-layer trajectories, final per layer, norms, phase diagram, one Gram figure per run: all
    # decoded with a width
    assert attrs["images-total"] == "7" and attrs["images-rendered"] == "7", attrs
    assert int(attrs["tables-total"]) >= 10 and attrs["tables-filled"] == attrs["tables-total"], attrs
    assert attrs["rendered"] == "ok", attrs

    shot = tmp_path / "shot.png"
    res = browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", url)
    assert res.returncode == 0 and shot.stat().st_size > 20_000, res.stderr[-2000:]  # a page, not a blank
