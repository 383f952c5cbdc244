"""nclab: neural collapse in deep linear networks.

Public Python API (the CLI ``nclab`` is a thin shell over it):

* :func:`nclab.predict` -- closed-form global minimizer of the deep linear UFM.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "predict", "Prediction", "simulate", "simulate_batch", "train", "run_sweep"]

# Imported on first use (PEP 562): ``import nclab`` and the CLI's start-up load neither torch nor matplotlib.
_LAZY = {"predict": "nclab.theory", "Prediction": "nclab.theory", "simulate": "nclab.ufm",
         "simulate_batch": "nclab.ufm.batched", "train": "nclab.experiments", "run_sweep": "nclab.experiments"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nclab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
