"""nclab: neural collapse in deep linear networks.

Public Python API (the CLI ``nclab`` is a thin shell over it):

* :func:`nclab.predict` -- closed-form global minimizer of the deep linear UFM.
"""

__version__ = "0.1.0"

from nclab.experiments import run_sweep, train  # noqa: E402
from nclab.theory import Prediction, predict  # noqa: E402
from nclab.ufm import simulate  # noqa: E402

__all__ = ["__version__", "predict", "Prediction", "simulate", "train", "run_sweep"]
