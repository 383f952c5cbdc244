"""Run listings, figures and the self-contained HTML report page, all read from run directories.

* :func:`find_runs` -- run directories given or found under folders; :func:`load_run` -- one, read.
* :func:`build_report` -- one HTML file (figures embedded, opens offline) for any set of runs.
* :mod:`nclab.report.figures` -- the figures (matplotlib, PNG + PDF); :mod:`nclab.report.phase` --
  the minority-collapse phase diagram from ``nclab.predict``.
"""

from nclab.report.runs import Run, find_runs, load_run, load_runs

__all__ = ["Run", "find_runs", "load_run", "load_runs", "build_report"]


def build_report(run_dirs, out=None, **kwargs):
    """See :func:`nclab.report.page.build_report` (imported lazily: matplotlib is only loaded here)."""
    from nclab.report.page import build_report as _build

    return _build(run_dirs, out, **kwargs)
