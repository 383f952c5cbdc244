"""Full-batch training of the deep linear UFM, with snapshots, checkpoints and exact resume.

Read top-down: optimizers, the Trainer (one run: init, step loop, snapshots, checkpoints), then
:func:`simulate`, the public entry point that wires a run directory around a Trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nclab.results import (
    CHECKPOINT,
    SUMMARY,
    WEIGHTS,
    RunFolderError,
    RunStore,
    TensorBoardLogger,
    open_run,
    resume_rows,
)
from nclab.ufm.config import SimulateConfig, auto_checkpoint_seconds, make_config
from nclab.ufm.model import UFM, parameter_count
from nclab.ufm.snapshot import Snapshotter

KIND = "ufm-simulation"
FINISHED = ("complete", "converged", "suboptimal", "diverged")
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SimulateConfig)}  # fields older runs may lack


# ---------------------------------------------------------------------------------------------- helpers
def lr_at(cfg: SimulateConfig, step: int) -> float:
    """Learning rate used by the update that takes the iterate from ``step`` to ``step + 1``."""
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / cfg.steps))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if step >= m)
    return cfg.lr


@contextlib.contextmanager
def torch_threads(n: int):
    """``n`` torch CPU threads (0: unchanged) and denormals flushed to zero while active: a run that decays to
    the zero solution otherwise crawls through subnormal arithmetic (measured: 30,000 SGD steps 15.7 s instead
    of ~3 s); values that small are zero for every metric. The metrics computed inside keep these threads
    (:func:`nclab.environment.pinned_threads`): a run's rows do not depend on the load at each snapshot."""
    from nclab.environment import pinned_threads

    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    flushed = torch.set_flush_denormal(True)
    try:
        with pinned_threads():
            yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def auto_threads(cfg: SimulateConfig) -> int:
    """Threads for a UFM run (``cfg.threads`` if set). Small problems are dominated by per-op overhead, where
    one thread is fastest (measured: 2 threads are 1.2-4x slower at K = 4, N = 400, d = 64); larger ones use
    the idle cores (:func:`nclab.environment.choose_threads`)."""
    from nclab.environment import choose_threads

    work = max(cfg.widths) * sum(cfg.counts) * len(cfg.counts)
    return choose_threads(cfg.threads, work, small=2_000_000)


class CheckpointSchedule:
    """When a run (or a batch of runs) checkpoints before its end: every ``checkpoint_every`` steps, or with 0
    every 10 snapshots but at most once per :func:`auto_checkpoint_seconds` (never at the last step: the end
    checkpoints anyway)."""

    def __init__(self, cfg: SimulateConfig):
        self.every = cfg.checkpoint_every or 10 * cfg.snapshot_every
        self.min_gap = 0.0 if cfg.checkpoint_every else auto_checkpoint_seconds()
        self.steps = cfg.steps
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if step % self.every or step >= self.steps or time.monotonic() - self.last < self.min_gap:
            return False
        self.last = time.monotonic()
        return True


def _check_memory(problem, itemsize: int) -> None:
    """Refuse, before allocating, a UFM whose parameters and work buffers cannot fit (with the bytes needed)."""
    from nclab.theory.resources import check_memory

    K, N, widths = problem.K, problem.N, list(problem.widths)
    params = parameter_count(K, N, widths)
    # parameters, gradient, optimizer state, last good copy and the snapshot's twin (~8 copies), plus the
    # K x N logits/residuals and K x d_j partial products of the hand-written gradient
    need = itemsize * (8 * params + 4 * K * N + 2 * K * sum(widths))
    check_memory(need, f"the deep linear UFM (K = {K:,}, N = {N:,}, widths {widths})",
                 "use smaller counts or widths")


class _SigintFlag:
    """While active (main thread only): the first Ctrl-C sets a flag (the run stops at the next snapshot
    boundary, checkpointed), a second one interrupts at once."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.set:
                    raise KeyboardInterrupt
                self.set = True

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclass
class SimulationResult:
    """Outcome of :func:`simulate`.

    Attributes
    ----------
    config : SimulateConfig
    run_dir : Path or None (None: nothing written)
    status : "complete" (all steps), "converged" (L-BFGS stopped early), "diverged" (non-finite loss;
        the parameters are the last good snapshot's), "interrupted"
    step : int, steps done (of the returned parameters)
    final : dict, last good metrics row (see nclab.ufm.snapshot)
    history : list of dict, all metrics rows
    prediction : nclab.theory.Prediction
    weights : list of float64 ndarrays W_j (d_{j+1}, d_j); H : ndarray (d, N); bias : ndarray (K,) or None
    seconds : wall time of this call's training loop (excluding snapshots: ``snapshot_seconds``)
    message : str
    """

    config: SimulateConfig
    run_dir: object
    status: str
    step: int
    final: dict
    history: list
    prediction: object
    weights: list
    H: np.ndarray
    bias: np.ndarray | None
    seconds: float = 0.0
    snapshot_seconds: float = 0.0
    message: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"SimulationResult(status={self.status!r}, step={self.step}, "
                f"objective={self.final.get('objective', float('nan')):.10g}, "
                f"rel_gap={self.final.get('rel_gap', float('nan')):.3g}, run_dir={str(self.run_dir)!r})")


# ---------------------------------------------------------------------------------------------- trainer
def _well_formed_reduced(state) -> dict | None:
    """A checkpoint's saved engine state (``{"step", "X", "flat", "buf"}``, see BatchUFM.run_state) when it has
    that form, else None: a malformed one (edited, truncated, another version's) is ignored, so the engine derives
    its basis from the parameters instead of failing on a KeyError deep in its constructor."""
    blocks = lambda v: isinstance(v, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in v)  # noqa: E731
    ok = (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("X"), torch.Tensor)
          and state["X"].dim() == 2 and blocks(state.get("flat")) and blocks(state.get("buf")))
    return state if ok else None


class Trainer:
    """One run: model, optimizer, step counter; ``run()`` advances to ``config.steps``.

    ``store`` (a RunStore or None) receives metric rows and checkpoints; ``callback(row)`` is called
    after every snapshot (raising KeyboardInterrupt there stops the run cleanly, checkpointed).
    """

    def __init__(self, config: SimulateConfig, *, prediction=None, store: RunStore | None = None,
                 callback: Callable[[dict], None] | None = None, progress: bool = False):
        from nclab.theory import predict

        self.cfg = cfg = config
        self.problem = config.problem
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} requested but CUDA is not available (torch.cuda.is_available() "
                             "is False); use --device cpu")
        self.pred = prediction if prediction is not None else predict(self.problem)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        _check_memory(self.problem, 8 if self.dtype == torch.float64 else 4)
        relu = cfg.activation != "identity"
        self.model = UFM(self.problem, dtype=self.dtype, device=cfg.device, activation=cfg.activation)
        self.model.init_(cfg.seed, cfg.init_std)
        self.references = None  # ReLU runs: the DNC / low-rank reference configurations (nclab.ufm.dnc)
        if relu:
            from nclab.ufm.dnc import references

            self.references = references(self.problem)
        if cfg.init == "prediction":  # the predicted minimizer plus the seeded N(0, init_std^2) noise just drawn
            try:  # ReLU: the DNC reference configuration
                if relu and self.references.dnc is None:
                    raise ValueError(self.references.reason)
                weights, H, b = (self.references.dnc.construct(self.problem.widths, self.problem.counts) if relu
                                 else self.pred.construct())
            except (ValueError, NotImplementedError) as exc:
                raise ValueError(f"init='prediction' needs an explicit minimizer: {exc}") from None
            noise = self.model.flat.clone()
            self.model.set_(weights, H, b)
            self.model.flat.add_(noise)
        if relu:
            from nclab.ufm.snapshot import ReluSnapshotter

            self.snapshotter = ReluSnapshotter(self.problem, self.references)
        else:
            self.snapshotter = Snapshotter(self.pred)
        self.store, self.callback, self.progress = store, callback, progress
        self.step = 0
        self.rows: list[dict] = []
        self.status, self.message = "running", ""
        self.last_good = self.model.flat.clone()
        self.last_good_step = 0
        # the batched engine's reduced state at a step (nclab.ufm.batched: X, A, P and their buffers), saved with a
        # checkpoint of that step so that a resume continues bitwise as the uninterrupted run does
        self.reduced_state: dict | None = None
        self.train_seconds = self.snapshot_seconds = 0.0
        use_manual = cfg.gradient in ("auto", "manual")
        self._grad = self.model.gradient_ if use_manual else (lambda with_loss=False: self.model.autograd_loss())
        self._build_optimizer()

    # -------------------------------------------------------------------- optimizers
    def _build_optimizer(self) -> None:
        cfg, flat = self.cfg, self.model.flat
        self.buf = None
        self.opt = None
        if cfg.optimizer == "sgd":
            self.buf = torch.zeros_like(flat)  # momentum buffer (torch.optim.SGD semantics)
        elif cfg.optimizer == "adam":
            flat.grad = self.model.grad
            self.opt = torch.optim.Adam([flat], lr=cfg.lr)
        else:
            flat.grad = self.model.grad
            tol = 1e-14 if self.dtype == torch.float64 else 1e-7
            self.opt = torch.optim.LBFGS([flat], lr=cfg.lr, max_iter=cfg.snapshot_every, history_size=10,
                                         tolerance_grad=tol * 1e-2, tolerance_change=tol * 1e-2,
                                         line_search_fn="strong_wolfe")

    def _closure(self):
        return self._grad(with_loss=True)

    def _advance(self, n: int) -> int:
        """Take up to n optimizer steps; returns how many were taken (L-BFGS may stop converged)."""
        cfg, m = self.cfg, self.model
        if cfg.optimizer == "sgd":
            flat, grad, buf, mu, grad_fn = m.flat, m.grad, self.buf, cfg.momentum, self._grad
            const = cfg.schedule == "constant"
            neg_lr = -cfg.lr
            for i in range(n):
                grad_fn()
                torch.add(grad, buf, alpha=mu, out=buf)  # buf = mu * buf + g
                flat.add_(buf, alpha=neg_lr if const else -lr_at(cfg, self.step + i))  # p -= lr * buf
            return n
        if cfg.optimizer == "adam":
            group = self.opt.param_groups[0]
            for i in range(n):
                group["lr"] = lr_at(cfg, self.step + i)
                self._grad()
                self.opt.step()
            return n
        state = self.opt.state[m.flat]
        before = state.get("n_iter", 0)
        group = self.opt.param_groups[0]
        group["max_iter"], group["max_eval"] = n, 25 * n
        with torch.no_grad():
            self.opt.step(self._closure)
        return state["n_iter"] - before

    def _optimizer_state(self):
        if self.buf is not None:
            return {"momentum_buffer": self.buf.clone()}
        return self.opt.state_dict()

    def _load_optimizer_state(self, state) -> None:
        if self.buf is not None:
            self.buf.copy_(state["momentum_buffer"])
        else:
            self.opt.load_state_dict(state)

    # -------------------------------------------------------------------- snapshots, checkpoints
    def _snapshot(self) -> dict:
        t0 = time.perf_counter()
        ws, H, b = self.model.weights, self.model.H, self.model.bias
        row = {"step": self.step, "lr": lr_at(self.cfg, max(self.step - 1, 0))}
        row.update(self.snapshotter(ws, H, b))
        self.snapshot_seconds += time.perf_counter() - t0
        return row

    def checkpoint(self) -> None:
        if self.store is None:
            return
        self.store.save_torch(CHECKPOINT, {
            "step": self.step,
            "flat": self.model.flat.detach().clone(),
            "optimizer": self._optimizer_state(),
            "torch_rng": torch.get_rng_state(),
            "last_good": self.last_good.clone(),
            "last_good_step": self.last_good_step,
            "config": self.cfg.to_dict(),
            "rows": list(self.rows),  # the history up to here: a resume rebuilds metrics.csv from it
            **({"reduced": self.reduced_state} if self.reduced_state is not None
               and self.reduced_state.get("step") == self.step else {}),
        })

    def load_checkpoint(self, ckpt: dict) -> None:
        self.reduced_state = _well_formed_reduced(ckpt.get("reduced"))
        dev = self.model.flat.device
        self.step = int(ckpt["step"])
        self.model.flat.copy_(ckpt["flat"].to(dev))
        self.last_good.copy_(ckpt["last_good"].to(dev))
        self.last_good_step = int(ckpt["last_good_step"])
        self._load_optimizer_state(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])

    def _record(self, row: dict) -> bool:
        """Store a snapshot row; False (and status "diverged") if the objective is not finite."""
        if not math.isfinite(row["objective"]):
            self.status = "diverged"
            self.message = (f"diverged: non-finite objective at step {self.step}; stopped, keeping the last good "
                            f"snapshot (step {self.last_good_step}). Lower the learning rate (now {self.cfg.lr:g}).")
            self.model.flat.copy_(self.last_good)
            self.step = self.last_good_step
            return False
        self.rows.append(row)
        self.last_good.copy_(self.model.flat)
        self.last_good_step = self.step
        if self.store is not None:
            self.store.append_rows([row])
        return True

    # -------------------------------------------------------------------- the loop
    def run(self) -> None:
        """Advance to ``config.steps`` (or convergence / divergence / interrupt)."""
        cfg = self.cfg
        every = cfg.snapshot_every
        schedule = CheckpointSchedule(cfg)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, leave=True)
        with torch_threads(auto_threads(cfg)), torch.no_grad(), _SigintFlag() as sigint:
            try:
                if self.step == 0 and not self.rows:
                    if not self._record(self._snapshot()):
                        return
                    self._after_snapshot(bar)
                while self.step < cfg.steps:
                    target = min(cfg.steps, (self.step // every + 1) * every)
                    wanted = target - self.step
                    t0 = time.perf_counter()
                    done = self._advance(wanted)
                    self.train_seconds += time.perf_counter() - t0
                    self.step += done
                    converged = done < wanted
                    if done == 0:  # L-BFGS made no progress at all: nothing new to record
                        self.status = "converged"
                        self.message = f"L-BFGS converged at iteration {self.step} (no further progress)"
                        break
                    if not self._record(self._snapshot()):
                        break
                    self._after_snapshot(bar)
                    if converged:
                        self.status = "converged"
                        self.message = f"L-BFGS converged at iteration {self.step} (no further progress)"
                        break
                    if self.reached_gap():
                        break
                    if schedule.due(self.step):
                        self.checkpoint()
                    if sigint.set:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                # raised at a step boundary (callback or the Ctrl-C flag): the state is consistent
                self.interrupted()
                raise
            finally:
                if bar is not None:
                    bar.close()
        self.finish()

    def interrupted(self) -> None:
        """Ctrl-C (or a callback) stopped the run at a consistent state: say so and checkpoint it."""
        self.status = "interrupted"
        self.message = f"interrupted at step {self.step}; run again with resume to continue"
        self.checkpoint()

    def finish(self) -> None:
        """The run ended (all steps, converged or diverged): its final status, diagnosis and checkpoint."""
        if self.status == "running":
            self.status = "complete"
            self.message = f"completed {self.step} steps"
        if self.status in ("complete", "converged"):
            with torch.no_grad():
                self._diagnose()
        self.checkpoint()

    def _diagnose(self) -> None:
        """Say when the run ended away from the global minimum: at the zero solution or another stationary
        point (status "suboptimal"), or still descending (status unchanged, the message says so)."""
        row = self.rows[-1] if self.rows else None
        if row is not None and self.references is not None:  # ReLU: no global minimum known, only references
            self.message += (f"; f = {row['objective']:.10g}, DNC configuration {self.references.f_dnc:.10g}, best "
                             f"low-rank configuration {self.references.f_lowrank:.10g}")
            return
        if row is None or not math.isfinite(row.get("rel_gap", math.nan)):
            return
        f, gap = row["objective"], row["rel_gap"]
        tol = 1e-6 if self.dtype == torch.float64 else 1e-4
        if gap <= tol:
            return
        with torch.enable_grad():
            self._grad()
        flat, grad = self.model.flat, self.model.grad
        gnorm = float(grad.norm()) / max(1.0, float(flat.norm()))
        f0 = self.pred.objective_zero
        if float(flat.abs().max()) < 1e-6 or abs(f - f0) <= 1e-9 * abs(f0) and gnorm < 1e-6:
            self.status = "suboptimal"
            self.message = (f"ended at the zero solution (f = {f:.10g} = its value {f0:.10g}), a stationary point "
                            f"that is not the global minimum f* = {self.pred.objective:.10g} (rel. gap {gap:.3g}); "
                            "its NC metrics are undefined. Start near the minimizer (--init prediction), from a "
                            "larger --init-std, or use --restarts")
        elif gnorm < 1e-6:
            self.status = "suboptimal"
            self.message = (f"ended at a stationary point that is not the global minimum: f = {f:.10g}, f* = "
                            f"{self.pred.objective:.10g} (rel. gap {gap:.3g}, gradient norm {gnorm:.2g}); for "
                            "depth M >= 2 near a threshold the landscape has such points. Try --init prediction or "
                            "--restarts")
        else:
            self.message += (f"; not converged: rel. gap to f* {gap:.3g}, gradient norm {gnorm:.2g} (run more "
                             "steps or use --optimizer lbfgs)")

    def reached_gap(self) -> bool:
        """Whether the last row, of the current step (> 0), meets ``stop_rel_gap``; then the run ends converged
        (status and message set). Also true for a resumed run stopped at that very row before this check."""
        cfg, rows = self.cfg, self.rows
        gap = rows[-1].get("rel_gap") if rows else None
        if not (cfg.stop_rel_gap and rows and self.step > 0 and rows[-1]["step"] == self.step
                and isinstance(gap, float) and gap <= cfg.stop_rel_gap):
            return False
        self.status = "converged"
        self.message = f"reached relative gap {gap:.3g} at step {self.step}"
        return True

    def _after_snapshot(self, bar) -> None:
        row = self.rows[-1]
        if bar is not None:
            bar.n = self.step
            bar.set_postfix(loss=f"{row['objective']:.6g}", gap=f"{row['rel_gap']:.2e}", refresh=False)
            bar.refresh()
        if self.callback is not None:
            self.callback(row)

    # -------------------------------------------------------------------- outputs
    def parameters(self):
        m = self.model
        ws = [w.detach().to("cpu", torch.float64).numpy().copy() for w in m.weights]
        H = m.H.detach().to("cpu", torch.float64).numpy().copy()
        b = None if m.bias is None else m.bias.detach().to("cpu", torch.float64).numpy().copy()
        return ws, H, b


# ---------------------------------------------------------------------------------------------- public API
def _result_from_store(cfg: SimulateConfig, store: RunStore, pred) -> SimulationResult:
    summary = store.read_json(SUMMARY)
    w = store.load_torch(WEIGHTS)
    rows = store.read_rows()
    try:
        weights, H = [t.numpy() for t in w["weights"]], w["H"].numpy()
        bias = None if w["bias"] is None else w["bias"].numpy()
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunFolderError(f"{store.file(WEIGHTS)} is not this run's weights ({type(exc).__name__}: {exc}); delete "
                             "it and rerun with --resume to rebuild it from the checkpoint") from None
    return SimulationResult(
        config=cfg, run_dir=store.path, status=summary["status"], step=summary["step"],
        final=rows[-1] if rows else {}, history=rows, prediction=pred, weights=weights, H=H, bias=bias,
        seconds=0.0, message=summary.get("message", ""), extra={"reused": True},
    )


def simulate(
    config: SimulateConfig | None = None,
    *,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    prediction=None,
    tensorboard: bool = False,
    _trainer: bool = False,
    **options,
) -> SimulationResult:
    """Train the deep linear UFM from a random start and compare it with ``nclab.predict``.

    SGD on the MSE objective (gradient "auto", no tensorboard) trains with the batched engine's reduced form
    (:mod:`nclab.ufm.batched`, a batch of one: the same iterates to round-off, faster; ``python
    benchmarks/simulate.py`` times it against a bare loop); other settings, and
    ``gradient="manual"``, with :class:`Trainer` (the hand-written gradient, the reference the engine is tested
    against; ``_trainer=True`` forces it for tests).

    Parameters
    ----------
    config : SimulateConfig, or None to build one from ``options`` (keyword arguments of
        :func:`nclab.ufm.make_config`: the problem as for ``nclab.predict`` -- counts / classes,
        per_class, depth, widths, lambda_w, lambda_h, bias, loss -- and optimizer ("sgd", "adam",
        "lbfgs"), lr, momentum, steps, schedule, milestones, gamma, init_std, seed, dtype, device,
        gradient, snapshot_every, checkpoint_every, threads).
    out : path of the run directory, or None to write nothing.
    resume : continue the run in ``out`` (same config required; a finished run is loaded, not re-run).
    overwrite : replace whatever run ``out`` holds.
    progress : show a progress bar (step, loss, relative gap).
    callback : called with each metrics row (dict) after it is recorded.
    prediction : a precomputed ``nclab.predict`` result for the same problem (else computed).
    tensorboard : also write every metrics row as TensorBoard scalars under ``out/tensorboard``.

    Returns
    -------
    SimulationResult (``.final["rel_gap"]``, ``.history``, ``.weights``, ``.prediction``, ...)

    Examples
    --------
    >>> r = simulate(classes=3, per_class=4, depth=2, widths=6, lambda_w=0.01, lambda_h=0.01,
    ...              optimizer="lbfgs", steps=2000, init_std=0.5)
    >>> r.final["rel_gap"] < 1e-8
    True
    """
    from nclab.theory import predict

    if config is None:
        config = make_config(**options)
    elif options:
        raise ValueError("give either a SimulateConfig or keyword options, not both")
    if not isinstance(config, SimulateConfig):
        raise ValueError(f"config must be a SimulateConfig, got {type(config).__name__}")
    if prediction is not None and prediction.problem != config.problem:
        raise ValueError("the given prediction is for another problem than the config's")
    auto_checkpoint_seconds()  # a bad NCLAB_CHECKPOINT_SECONDS is refused before anything is written
    pred = prediction if prediction is not None else predict(config.problem)
    store = None
    ckpt = None
    if out is not None:
        store, ckpt, done = open_run(out, config.to_dict(), kind=KIND, resume=resume, overwrite=overwrite,
                                     finished=FINISHED, defaults=DEFAULTS)
    try:
        if store is not None and done:
            return _result_from_store(config, store, pred)
        if not _trainer and _engine_fits(config, tensorboard):
            return _run_engine(config, pred, store, ckpt, callback=callback, progress=progress)
        return _run(config, pred, store, ckpt, callback=callback, progress=progress, tensorboard=tensorboard)
    finally:
        if store is not None:
            store.unlock()


def _engine_fits(config: SimulateConfig, tensorboard: bool) -> bool:
    """Whether a run trains with the batched engine's reduced form: SGD, MSE, the linear UFM, gradient "auto",
    a within-class part to reduce (N > K), no tensorboard."""
    return (config.optimizer == "sgd" and config.loss == "mse" and config.activation == "identity"
            and config.gradient == "auto" and not tensorboard and config.problem.N > config.problem.K)


def _run_engine(config: SimulateConfig, pred, store: RunStore | None, ckpt: dict | None, *, callback,
                progress) -> SimulationResult:
    """One run through :func:`nclab.ufm.batched._train_group` (a batch of one): the folder, rows and result as
    :func:`_run` writes them; its checkpoints carry the engine's reduced state, so a resume is bitwise."""
    from nclab.ufm.batched import _finish, _Run, _threads, _train_group

    trainer = Trainer(config, prediction=pred, store=store, callback=callback)  # first: a refused run writes nothing
    _write_setup(config, pred, store, _threads(config, 1))
    if store is not None:
        restore(trainer, store, ckpt)
    run = _Run(0, trainer, store)
    bar = None
    if progress:  # the Trainer's bar (step, loss, relative gap), not the batch's (runs still running)
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=trainer.step, unit="step", dynamic_ncols=True, leave=True)

    def on_row(i: int, row: dict) -> None:  # the engine recorded the row and step into the Trainer
        trainer._after_snapshot(bar)

    try:
        if trainer.reached_gap() or trainer.step >= config.steps:
            _finish(run)
        else:
            _train_group([run], "auto", False, on_row if bar is not None or callback is not None else None)
    finally:
        if bar is not None:
            bar.close()
        if store is not None:
            _write_outputs(trainer, store)
    return _result(trainer)


def _write_setup(config: SimulateConfig, pred, store: RunStore | None, threads: int) -> None:
    """config.json, environment.json (with the threads used), prediction.json (and references.json for ReLU)."""
    from nclab import __version__
    from nclab.environment import environment

    if store is None:
        return
    store.write_config(config.to_dict(), kind=KIND, version=__version__)
    env = environment()
    env["threads_used"] = threads
    store.write_environment(env)
    store.write_json("prediction.json", pred.to_dict())
    if config.activation != "identity":
        from nclab.ufm.dnc import references

        store.write_json("references.json", references(config.problem).to_dict())


def _result(trainer: Trainer) -> SimulationResult:
    ws, H, b = trainer.parameters()
    return SimulationResult(
        config=trainer.cfg, run_dir=None if trainer.store is None else trainer.store.path, status=trainer.status,
        step=trainer.step, final=trainer.rows[-1] if trainer.rows else {}, history=list(trainer.rows),
        prediction=trainer.pred, weights=ws, H=H, bias=b, seconds=trainer.train_seconds,
        snapshot_seconds=trainer.snapshot_seconds, message=trainer.message,
    )


def _run(config: SimulateConfig, pred, store: RunStore | None, ckpt: dict | None, *, callback, progress,
         tensorboard) -> SimulationResult:
    if tensorboard and store is None:
        raise ValueError("tensorboard needs an output directory (out=...)")
    trainer = Trainer(config, prediction=pred, store=store, progress=progress)  # first: a refused run writes nothing
    _write_setup(config, pred, store, auto_threads(config))
    board = None
    if tensorboard:
        board = TensorBoardLogger(store.path)
        callback = board if callback is None else _both(callback, board)
    trainer.callback = callback
    if store is not None:
        restore(trainer, store, ckpt)
    try:
        if trainer.reached_gap():
            trainer.finish()
        else:
            trainer.run()
    finally:
        if store is not None:
            _write_outputs(trainer, store)
        if board is not None:
            board.close()
    return _result(trainer)


def restore(trainer: Trainer, store: RunStore, ckpt: dict | None) -> None:
    """Continue ``trainer`` from the checkpoint (its rows rewrite metrics.csv), or start an empty table."""
    if ckpt is None:
        store.write_rows([])  # no usable checkpoint: start over, empty table
        trainer.rows = []
        return
    try:
        trainer.load_checkpoint(ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise RunFolderError(f"{store.file(CHECKPOINT)} does not fit this run ({type(exc).__name__}: {exc}); use "
                             "--overwrite to start over") from None
    trainer.rows = resume_rows(store, ckpt)


def _both(first: Callable[[dict], None], second: Callable[[dict], None]) -> Callable[[dict], None]:
    def call(row: dict) -> None:
        first(row)
        second(row)

    return call


def _write_outputs(trainer: Trainer, store: RunStore) -> None:
    m = trainer.model
    cpu = lambda t: t.detach().to("cpu").clone()  # noqa: E731
    store.save_torch(WEIGHTS, {
        "step": trainer.step,
        "weights": [cpu(w) for w in m.weights],
        "H": cpu(m.H),
        "bias": None if m.bias is None else cpu(m.bias),
        "labels": m.labels.cpu(),
    })
    final = trainer.rows[-1] if trainer.rows else {}
    steps = max(trainer.step, 1)
    store.write_json(SUMMARY, {
        "status": "failed" if trainer.status == "running" else trainer.status,  # an exception escaped the loop
        "message": trainer.message,
        "step": trainer.step,
        "rows": len(trainer.rows),  # metrics.csv's row count, checked when a finished run is reopened
        "steps": trainer.cfg.steps,
        "train_seconds": trainer.train_seconds,
        "snapshot_seconds": trainer.snapshot_seconds,
        "ms_per_step": 1e3 * trainer.train_seconds / steps,
        "prediction": {"objective": trainer.pred.objective, "geometry": trainer.pred.geometry,
                       "gram_unique": trainer.pred.gram_unique},
        "final": final,
        **({"references": trainer.references.to_dict()} if trainer.references is not None else {}),
    })
