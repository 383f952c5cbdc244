"""Direct optimization of the deep linear UFM (the paper's "synthetic" experiments).

* :func:`simulate` -- train from a random start, snapshot NC metrics against ``nclab.predict``,
  store everything in a run directory (resumable).
* :class:`SimulateConfig` / :func:`make_config` -- the validated, frozen run configuration.
* :class:`UFM` -- parameters in one flat tensor with a hand-written gradient of the shared objective.
* :mod:`nclab.ufm.presets` -- the paper's synthetic experiments (figures: :mod:`nclab.report.figures`).

What to expect. From a random start, float64 L-BFGS reaches the predicted f* to ~1e-13 relative and the
predicted Grams to ~1e-8 in every MSE setting (balanced, bias, imbalanced, bottleneck, per-layer lambdas)
and in CE where the ETF is global; the paper's SGD (30,000 steps) reaches f* to ~1e-12 at K = 4, n = 100,
d = 64 for M = 1..9. Caveat: for depth M >= 2 zero is a strict local minimum of every mode (theory.md
sec. 2), so NEAR the thresholds a*(M) (a class size close to the minority-collapse threshold, or lambdas
close to the trivial-solution threshold), or from a too-small init (init_std well below 1/sqrt(width)),
a random start can stop in a local minimum with a collapsed mode: f > f*, never below. There, start from
the predicted minimizer plus noise (``Trainer(cfg).model.set_(*noisy(prediction.construct()))``, as the
tests do) to check that it is a minimum, and compare several seeds. CE with M >= 2 may have a lower-rank
global minimizer than the ETF (``prediction.ce["etf_is_global"]``): the gap is then relative to the best
known value.
"""

from nclab.ufm.config import SimulateConfig, make_config
from nclab.ufm.model import UFM
from nclab.ufm.trainer import SimulationResult, Trainer, simulate

__all__ = ["SimulateConfig", "make_config", "UFM", "SimulationResult", "Trainer", "simulate"]
