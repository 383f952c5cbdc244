"""Real networks (MLP, ResNet18, VGG16 + a deep linear head) trained with online NC tracking.

* :func:`train` -- one run from a config or keyword options (``preset=...``), into a run directory
  (the format of ``nclab simulate``), resumable, on CPU, CUDA or several processes under torchrun.
* :class:`TrainConfig` / :func:`make_train_config` / :func:`load_toml` -- the validated run configuration.
* :mod:`nclab.experiments.presets` -- the paper's experiments (GPU) and CPU-sized versions.
* :mod:`nclab.experiments.objective` -- the exact, per-sample scaled objective (mini-batch = full batch).
* :mod:`nclab.experiments.tracking` -- per-layer NC1/NC2/NC3 against ETF, OF or the theory's GOF.
"""

from nclab.experiments.config import TrainConfig, load_toml, make_train_config
from nclab.experiments.presets import DESCRIPTIONS, PRESETS
from nclab.experiments.sweep import SweepResult, SweepSpec, expand_sweep, load_sweep, run_sweep
from nclab.experiments.trainer import Trainer, TrainResult, load_model, train

__all__ = ["DESCRIPTIONS", "PRESETS", "TrainConfig", "TrainResult", "Trainer", "load_model", "load_toml",
           "make_train_config", "train", "SweepResult", "SweepSpec", "expand_sweep", "load_sweep", "run_sweep"]
