"""Moved to :mod:`nclab.report.figures` (kept so ``from nclab.ufm.figures import plot_runs`` still works)."""

from nclab.report.figures import plot_runs

__all__ = ["plot_runs"]
