"""Configuration of one UFM training run: a frozen dataclass, validated once, saved verbatim."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from nclab.theory import Problem, make_problem
from nclab.theory.problem import check_int

OPTIMIZERS = ("sgd", "adam", "lbfgs")
SCHEDULES = ("constant", "cosine", "step")
DTYPES = ("float32", "float64")
GRADIENTS = ("auto", "manual", "autograd")
INITS = ("random", "prediction")
ACTIVATIONS = ("identity", "relu")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "lbfgs": 1.0}


@dataclass(frozen=True)
class SimulateConfig:
    """Everything that determines a run's result (build with :func:`make_config`).

    Two runs with equal configs give bitwise-equal results on the same machine and software.
    """

    # the problem (as nclab.predict takes it)
    counts: tuple[int, ...]  # samples per class n_1..n_K
    widths: tuple[int, ...]  # [d_1 = d, d_2, ..., d_M]
    lambda_w: tuple[float, ...]  # weight decay of W_1..W_M
    lambda_h: float  # feature decay
    bias: bool = False  # unregularized last-layer bias
    loss: str = "mse"  # "mse" or "ce"
    # "identity": the deep linear UFM (nclab.predict's model); "relu": H_{j+1} = ReLU(W_j H_j) between the layers
    # (the deep UFM of Sukenik, Mondelli, Lampert; the last layer stays linear; see nclab.ufm.dnc)
    activation: str = "identity"
    # the optimizer (defaults: the paper's full-batch SGD)
    optimizer: str = "sgd"  # "sgd" (heavy ball, torch semantics), "adam", "lbfgs" (strong Wolfe line search)
    lr: float = 0.1  # base learning rate (L-BFGS: initial step, 1.0)
    momentum: float = 0.9  # SGD only: buf = momentum * buf + grad; p -= lr * buf
    steps: int = 30000  # optimizer steps (L-BFGS: iterations; it may stop earlier, converged)
    schedule: str = "constant"  # "constant", "cosine" (to 0 at `steps`), "step" (lr *= gamma at milestones)
    milestones: tuple[int, ...] = ()  # "step" schedule: steps at which lr is multiplied by gamma
    gamma: float = 0.1  # "step" schedule factor
    init_std: float = 0.1  # every parameter i.i.d. N(0, init_std^2), the paper's init ("prediction": the noise)
    init: str = "random"  # "random" (the paper's) or "prediction": nclab.predict's minimizer + N(0, init_std^2)
    seed: int = 0
    dtype: str = "float64"  # "float64" (tight comparisons) or "float32" (the paper's)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    # "auto": SGD + MSE in the batched engine's reduced form (nclab.ufm.batched), else "manual"; "manual": the
    # Trainer's closed-form gradient; "autograd": autograd of the shared objective
    gradient: str = "auto"
    stop_rel_gap: float = 0.0  # stop ("converged") once (f - f*)/|f*| <= this at a snapshot (0: never)
    # bookkeeping that changes what is recorded, not the iterates
    snapshot_every: int = 100  # metrics row every k steps (and at step 0 and the last step)
    checkpoint_every: int = 0  # checkpoint every k steps (0: every 10 snapshots, at most one per
    #   auto_checkpoint_seconds()); also on interrupt and at the end
    threads: int = 0  # torch CPU threads during the run (0: 1 for small problems, else torch's default)

    @property
    def problem(self) -> Problem:
        return make_problem(self.counts, widths=list(self.widths), lambda_w=list(self.lambda_w),
                            lambda_h=self.lambda_h, bias=self.bias, loss=self.loss)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SimulateConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return make_config(**d)

    def replace(self, **changes) -> SimulateConfig:
        return make_config(**{**self.to_dict(), **changes})


def _number(value, name: str, *, low: float | None = None, strict: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return v


def make_config(
    counts: Sequence[int] | None = None,
    *,
    classes: int | None = None,
    per_class: int | None = None,
    depth: int | None = None,
    widths: Sequence[int] | int | None = None,
    lambda_w: Sequence[float] | float = 5e-4,
    lambda_h: float = 5e-4,
    bias: bool = False,
    loss: str = "mse",
    activation: str = "identity",
    optimizer: str = "sgd",
    lr: float | None = None,
    momentum: float = 0.9,
    steps: int = 30000,
    schedule: str = "constant",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    init_std: float = 0.1,
    init: str = "random",
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
    gradient: str = "auto",
    stop_rel_gap: float = 0.0,
    snapshot_every: int = 100,
    checkpoint_every: int = 0,
    threads: int = 0,
) -> SimulateConfig:
    """Validate user input (the problem exactly as :func:`nclab.predict`) into a :class:`SimulateConfig`.

    ``lr`` defaults per optimizer: SGD 0.1 (the paper's), Adam 1e-3, L-BFGS 1.0. ``activation``: "identity"
    (the deep linear UFM, default) or "relu" (ReLU after every layer but the last). Every error is one
    clear ``ValueError``.
    """
    prob = make_problem(counts, classes=classes, per_class=per_class, depth=depth, widths=widths,
                        lambda_w=lambda_w, lambda_h=lambda_h, bias=bias, loss=loss)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    lr = DEFAULT_LR[optimizer] if lr is None else _number(lr, "learning rate lr", low=0.0)
    momentum = _number(momentum, "momentum", low=0.0, strict=False)
    if momentum >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    steps = check_int(steps, "steps", 1)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if isinstance(milestones, str):  # "10000,20000" (a string is not a sequence of milestones)
        milestones = [m for m in milestones.replace(" ", "").split(",") if m]
    milestones = tuple(check_int(m, "every milestone", 1) for m in (milestones or ()))
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"milestones must be increasing, got {list(milestones)}")
    if schedule == "step" and not milestones:
        raise ValueError("the 'step' schedule needs milestones (steps at which lr is multiplied by gamma)")
    gamma = _number(gamma, "gamma", low=0.0)
    init_std = _number(init_std, "init_std", low=0.0, strict=init != "prediction")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    seed = check_int(seed, "seed", 0)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    device = str(device)
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    stop_rel_gap = _number(stop_rel_gap, "stop_rel_gap", low=0.0, strict=False)
    snapshot_every = check_int(snapshot_every, "snapshot interval", 1)
    checkpoint_every = check_int(checkpoint_every, "checkpoint interval", 0)
    threads = check_int(threads, "threads", 0)
    return SimulateConfig(
        counts=prob.counts, widths=prob.widths, lambda_w=prob.lambda_w, lambda_h=prob.lambda_h,
        bias=prob.bias, loss=prob.loss, activation=activation, optimizer=optimizer, lr=lr, momentum=momentum,
        steps=steps,
        schedule=schedule, milestones=milestones, gamma=gamma, init_std=init_std, init=init, seed=seed,
        dtype=dtype,
        device=device, gradient=gradient, stop_rel_gap=stop_rel_gap, snapshot_every=snapshot_every,
        checkpoint_every=checkpoint_every, threads=threads,
    )


#: with checkpoint_every = 0: at most one checkpoint per this many seconds (NCLAB_CHECKPOINT_SECONDS overrides).
#: A paper run of 3 s wrote 30 fsync'ed checkpoints (about a fifth of a batched run's time, measured); a kill -9
#: now loses at most this much work, Ctrl-C nothing (an interrupt always checkpoints); the iterates never change.
AUTO_CHECKPOINT_SECONDS = 10.0


def auto_checkpoint_seconds() -> float:
    """Least wall time between automatic checkpoints (``NCLAB_CHECKPOINT_SECONDS``, default 10; 0: every 10
    snapshots regardless of time)."""
    text = os.environ.get("NCLAB_CHECKPOINT_SECONDS", "").strip()
    if not text:
        return AUTO_CHECKPOINT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"NCLAB_CHECKPOINT_SECONDS must be a number of seconds >= 0, got {text!r}")
    return value
