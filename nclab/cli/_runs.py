"""Shared by the run commands (simulate, train): the run-folder flags and a periodic status line for logs."""

from __future__ import annotations

import math
import os
import sys
import time


def check_run_flags(out: str | None, resume: bool, overwrite: bool) -> None:
    """One ValueError for --out/--resume/--overwrite combinations that cannot mean anything."""
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if out is not None and not out.strip():
        raise ValueError("--out must not be empty")
    if resume and out is None:
        raise ValueError("--resume needs --out, the run directory to continue")
    if resume:
        from nclab.results import RunStore, depth_run_dirs

        if not RunStore(out).exists() and not depth_run_dirs(out):
            raise ValueError(f"{out} holds no run to resume; drop --resume to start one there")


def _seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class StatusLine:
    """Callback for the trainers' metrics rows: at most one line every ``interval`` seconds (default 30, or
    ``NCLAB_STATUS_SECONDS``), e.g. ``[runs/x] epoch 12/60 (20%): objective 0.0123, NC1 L1 0.05, train acc
    0.98; 41 s elapsed, ~2 min left``. The first line comes after one interval, so short runs stay quiet."""

    def __init__(self, label: str, total: int, *, unit: str = "epoch", interval: float | None = None,
                 stream=None):
        self.label, self.total, self.unit = label, total, unit
        if interval is None:
            interval = float(os.environ.get("NCLAB_STATUS_SECONDS", "30"))
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.first_done: int | None = None  # the first row seen: this session's starting point

    def __call__(self, row: dict) -> None:
        done = int(row.get(self.unit, 0) or 0)
        if self.first_done is None:
            self.first_done = done
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.start
        rate = (done - self.first_done) / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("nan")
        parts = [f"{k} {row[k]:.4g}" for k in ("objective", "rel_gap", "nc1_L1", "train_acc")
                 if isinstance(row.get(k), (int, float))]
        pct = 100.0 * done / self.total if self.total else 100.0
        print(f"[{self.label}] {self.unit} {done}/{self.total} ({pct:.0f}%): {', '.join(parts)}; "
              f"{_seconds(elapsed)} elapsed, ~{_seconds(left)} left", file=self.stream, flush=True)


def chain(*callbacks):
    """One callback calling each non-None callback in turn."""
    cbs = [c for c in callbacks if c is not None]
    if not cbs:
        return None
    if len(cbs) == 1:
        return cbs[0]

    def call(row: dict) -> None:
        for c in cbs:
            c(row)

    return call
