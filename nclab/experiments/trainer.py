"""Training a backbone + deep linear head with online NC tracking, checkpoints and exact resume.

Read top-down: the schedule, the Trainer (one run: data, model, optimizer; ``run()`` = epochs, metrics
rows, checkpoints), then :func:`train`, the public entry point that wires a run directory (the same
format as ``nclab simulate``: nclab.results) and torch.distributed around a Trainer.

Exact resume: the data order is a function of (seed, epoch) (data.epoch_batches), the init is seeded,
and a checkpoint holds the model, the optimizer state, the counters and the RNG states, so an
interrupted run continued with ``resume=True`` ends with the same weights and metrics rows as an
uninterrupted one (bitwise on the same machine, software and process count).

A metrics row (metrics.csv; one at epoch 0, every ``track_every`` epochs and at the last):

    epoch, step (optimizer steps), lr (of the last epoch)
    train_loss        (1/N) sum_i ell_i during the epoch's training (train mode, as the optimizer saw it)
    objective         the exact objective (nclab.experiments.objective) in eval mode after the epoch
    rel_gap           (objective - f*) / f*, f* the deep linear UFM's minimum (a lower bound; "theory" target)
    train_acc         argmax accuracy on the training set (eval mode)
    nc1_L{j}, nc2_w, nc2_h, nc3, nc2_w_L{j}, nc2_h_L{j}, nc3_L{j}   end to end and per head layer (the names
                      simulate writes too: nclab/report/columns.py; nclab.experiments.tracking)
    w_norm_{k}, h_norm_{k}, w_norm_err, h_norm_err   class norms (the errors against the theory target)
    test_acc, test_loss   on the test split (empty without one)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from nclab.experiments.config import TrainConfig, make_train_config
from nclab.experiments.data import epoch_batches, load_run_data, shard
from nclab.experiments.distributed import Dist, setup
from nclab.experiments.objective import batch_loss, head_penalty, sample_losses
from nclab.experiments.tracking import HeadTracker, choose_target
from nclab.metrics import ClassStats, capture_inputs
from nclab.models import build_model
from nclab.results import (
    CHECKPOINT,
    CONFIG,
    SUMMARY,
    WEIGHTS,
    RunFolderError,
    RunStore,
    open_run,
    resume_rows,
)
from nclab.ufm.trainer import _SigintFlag, torch_threads

KIND = "train"
HEAD_INPUT = "head.linears.0"  # the module whose input is the head input h (captured by a hook)
FINISHED = ("complete", "diverged")


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of (0-based) epoch ``epoch``."""
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_size)
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


class _WithFeatures(nn.Module):
    """net -> (logits (B, K), head input h (B, d_1)): what DistributedDataParallel wraps."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        h = self.net.backbone(x)
        return self.net.head(h), h


def _check_model_memory(cfg: TrainConfig, in_shape, K: int, itemsize: int) -> None:
    """Refuse, before building it, a head or MLP backbone whose weights cannot fit (about 4 copies: weights,
    gradients, two Adam moments), with the bytes needed. Conv backbones have a fixed size."""
    from nclab.theory.resources import check_memory

    w, mw = cfg.width, cfg.mlp_width or cfg.width
    head = (cfg.depth - 1) * w * w + K * w
    backbone = (math.prod(in_shape) * mw + (cfg.mlp_depth - 1) * mw * mw) if cfg.arch == "mlp" else 0
    check_memory(4.0 * itemsize * (head + backbone), f"the model (head depth {cfg.depth:,}, width {w:,})",
                 "use a smaller depth or width")


def _has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    config : TrainConfig; run_dir : Path or None (None: nothing written)
    status : "complete", "diverged" (non-finite loss; the model is the last good metrics row's),
        "interrupted"
    epoch : epochs done (of the returned model); final : last metrics row; history : all rows
    model : the NCNet (backbone + DeepLinearHead) on the run's device
    target : "etf", "of" or "theory" (what NC2/NC3 compare with); prediction : nclab.predict result or None
    seconds, track_seconds, test_seconds : wall time of training, of the NC metrics passes, of the test passes
    """

    config: TrainConfig
    run_dir: object
    status: str
    epoch: int
    final: dict
    history: list
    model: nn.Module
    target: str = ""
    prediction: object = None
    seconds: float = 0.0
    track_seconds: float = 0.0
    test_seconds: float = 0.0
    message: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        f = self.final
        return (f"TrainResult(status={self.status!r}, epoch={self.epoch}, nc1_L1={f.get('nc1_L1', math.nan):.3g}, "
                f"train_acc={f.get('train_acc', math.nan):.4f}, run_dir={str(self.run_dir)!r})")


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One run: data and model on the device, optimizer, counters; ``run()`` trains to ``config.epochs``.

    ``store`` (a RunStore, process 0 only) receives rows and checkpoints; ``callback(row)`` is called on
    process 0 after every metrics row (raising KeyboardInterrupt there stops the run cleanly, checkpointed).
    """

    def __init__(self, config: TrainConfig, *, store: RunStore | None = None, dist: Dist | None = None,
                 callback: Callable[[dict], None] | None = None, progress: bool = False):
        self.cfg = cfg = config
        self.dist = d = dist if dist is not None else setup(cfg.device)
        self.device = d.device
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.data = load_run_data(cfg, self.device, self.dtype)
        K = self.data.num_classes
        _check_model_memory(cfg, self.data.in_shape, K, 8 if self.dtype == torch.float64 else 4)
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG alone
            torch.manual_seed(cfg.seed)
            net = build_model(cfg.arch, self.data.in_shape, K, cfg.depth, cfg.width, cfg.bias,
                              mlp_depth=cfg.mlp_depth, mlp_width=cfg.mlp_width, batch_norm=cfg.batch_norm)
        net = net.to(device=self.device, dtype=self.dtype)
        if d.active and self.device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # batch statistics over the global batch
        self.net = net
        self._check_batches()
        self.threads = self._threads()
        self.model = _WithFeatures(net)
        if d.active:
            ids = [self.device] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        head_ids = {id(p) for p in net.head.parameters()}
        groups = [{"params": [p for p in net.parameters() if id(p) not in head_ids], "weight_decay": cfg.weight_decay},
                  {"params": list(net.head.parameters()), "weight_decay": 0.0}]  # head: exact decay in the loss
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        else:
            self.opt = torch.optim.Adam(groups, lr=cfg.lr)
        self.target, self.prediction, self.target_note = choose_target(cfg, self.data.train.counts, net.head.widths)
        self.tracker = HeadTracker(self.target, self.prediction, self.data.train.counts, cfg.depth, cfg.bias)
        self.store, self.callback, self.progress = store, callback, progress and d.main
        self.epoch = self.step = 0
        self.rows: list[dict] = []
        self.status, self.message = "running", ""
        self.train_seconds = self.track_seconds = self.test_seconds = 0.0
        self._last_good = None  # (epoch, step, state_dict copy) at the latest metrics row
        self._stop = False
        self.bar = None
        self._consistent = True  # False while an epoch is half done (nothing resumable to save then)

    def _threads(self) -> int:
        """CPU threads (``cfg.threads``, or 0: chosen as for simulate). Work per step ~ parameters x batch (x pixels
        for convolutions); measured on 2 loaded cores: cpu-mlp-balanced 5.1 s with one thread, 22 s with two."""
        from nclab.environment import choose_threads

        cfg, n = self.cfg, self.data.train.n
        batch = n if cfg.batch_size == 0 or cfg.batch_size >= n else cfg.batch_size
        pixels = 1 if cfg.arch == "mlp" else math.prod(self.data.in_shape[1:])
        work = sum(p.numel() for p in self.net.parameters()) * batch * pixels
        threads = choose_threads(cfg.threads, work, small=1e8)
        if not cfg.threads and self.dist.world > 1 and self.device.type == "cpu":
            threads = max(1, threads // self.dist.world)  # the processes share the machine's cores
        return threads

    def _check_batches(self) -> None:
        cfg, n, world = self.cfg, self.data.train.n, self.dist.world
        smallest = n if cfg.batch_size == 0 or cfg.batch_size >= n else n // -(-n // cfg.batch_size)
        need = 2 if _has_batch_norm(self.net) else 1
        if smallest // world < need:
            raise ValueError(f"batches of {smallest} samples over {world} process(es) leave fewer than {need} per "
                             f"process{' (batch norm needs 2)' if need == 2 else ''}; use a larger batch_size")

    # -------------------------------------------------------------------- one epoch
    def _train_epoch(self) -> torch.Tensor:
        """One pass over the training set; returns sum_i ell_i over this process's samples (float64)."""
        cfg, tr, d = self.cfg, self.data.train, self.dist
        lr = lr_at(cfg, self.epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        weights = self.net.head.weights()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for b in epoch_batches(tr.n, cfg.batch_size, cfg.seed, self.epoch):
            lo, hi = shard(len(b), d.rank, d.world)
            if len(b) == tr.n:
                x, y = tr.X[lo:hi], tr.y[lo:hi]  # full batch, in dataset order: a view, no gather
            else:
                idx = torch.as_tensor(b[lo:hi], device=self.device)
                x, y = tr.X[idx], tr.y[idx]
            logits, h = self.model(x)
            loss, ell_sum = batch_loss(logits, h, y, weights, loss=cfg.loss, lambda_w=cfg.lambda_w,
                                       lambda_h=cfg.lambda_h, n_total=tr.n, batch=len(b), world=d.world)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += ell_sum
            self.step += 1
        self.epoch += 1
        return total

    # -------------------------------------------------------------------- metrics
    @torch.no_grad()
    def _pass(self, split, stats: ClassStats | None) -> torch.Tensor:
        """Eval-mode pass over this process's contiguous shard of a split (no padding, no duplicates).
        Returns float64 sums [sum ell_i, sum ||h_i||^2, correct, samples]; feeds h to ``stats``."""
        d, loss = self.dist, self.cfg.loss
        lo, hi = shard(split.n, d.rank, d.world)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        with capture_inputs(self.net, [HEAD_INPUT]) as feats:
            for i in range(lo, hi, self.cfg.eval_batch_size):
                j = min(i + self.cfg.eval_batch_size, hi)
                x, y = split.X[i:j], split.y[i:j]
                logits = self.net(x).double()  # (B, K)
                h = feats[HEAD_INPUT]  # (B, d_1), the head input
                # non-finite features (a diverging step) make the objective non-finite: _row reports divergence
                # then, and ClassStats would refuse them with an error instead
                if stats is not None and bool(torch.isfinite(h).all()):
                    stats.update(h, y)
                hd = h.double()
                sums += torch.stack([sample_losses(logits, y, loss).sum(), (hd * hd).sum(),
                                     (logits.argmax(1) == y).sum().double(), torch.tensor(j - i, device=self.device,
                                                                                         dtype=torch.float64)])
        return d.all_sum(sums)

    def _row(self, ell_sum: float | None) -> dict:
        """One metrics row: NC metrics per head layer on the training set (eval mode), accuracies, objective."""
        cfg, d, net = self.cfg, self.dist, self.net
        t0 = time.perf_counter()
        net.eval()
        if d.active:
            for buf in net.buffers():  # batch-norm running stats of process 0 (each process saw its own shard)
                torch.distributed.broadcast(buf, 0)
        tr = self.data.train
        stats = ClassStats(self.data.num_classes, dim=net.head.widths[0], moments="scatter", device=self.device)
        s = self._pass(tr, stats)
        if d.active:
            stats.all_reduce()
        weights = net.head.weights()
        pen = float(head_penalty([w.detach().double() for w in weights], cfg.lambda_w))
        objective = float(s[0]) / tr.n + 0.5 * cfg.lambda_h * float(s[1]) + pen
        row = {"epoch": self.epoch, "step": self.step, "lr": lr_at(cfg, max(self.epoch - 1, 0)),
               "train_loss": None if ell_sum is None else ell_sum / tr.n, "objective": objective,
               "rel_gap": None, "train_acc": float(s[2]) / tr.n}
        if self.prediction is not None:
            f_star = float(self.prediction.objective)
            row["rel_gap"] = (objective - f_star) / abs(f_star) if f_star != 0 else float("nan")  # f* = 0: undefined
        if math.isfinite(objective):
            row.update(self.tracker(stats, weights))
        else:
            row.update({k: None for k in self.tracker.columns()})
        t1 = time.perf_counter()
        row["test_acc"] = row["test_loss"] = None
        if self.data.test is not None:
            st = self._pass(self.data.test, None)
            row["test_acc"], row["test_loss"] = float(st[2]) / self.data.test.n, float(st[0]) / self.data.test.n
        net.train()
        self.track_seconds += t1 - t0
        self.test_seconds += time.perf_counter() - t1
        return row

    def _state_copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def _record(self, row: dict) -> None:
        self.rows.append(row)
        self._last_good = (self.epoch, self.step, self._state_copy())  # on the device: cheap
        if self.store is not None:
            self.store.append_rows([row])
        if self.bar is not None:
            self.bar.n = self.epoch
            self.bar.set_postfix(loss=f"{row['objective']:.4g}", nc1=f"{row['nc1_L1']:.3g}",
                                 acc=f"{row['train_acc']:.3f}", refresh=False)
            self.bar.refresh()
        if self.callback is not None and self.dist.main:
            try:
                self.callback(row)
            except KeyboardInterrupt:  # stop at this boundary, on every process
                self._stop = True

    def _diverged(self, what: str) -> None:
        epoch, step, state = self._last_good
        self.net.load_state_dict(state)
        self.status = "diverged"
        self.message = (f"diverged: non-finite {what} at epoch {self.epoch}; stopped, keeping the model of the last "
                        f"good metrics row (epoch {epoch}) and the last checkpoint. Lower the learning rate "
                        f"(now {self.cfg.lr:g}).")
        self.epoch, self.step = epoch, step

    # -------------------------------------------------------------------- checkpoints
    def checkpoint(self) -> None:
        if self.store is None:
            return
        self.store.save_torch(CHECKPOINT, {
            "epoch": self.epoch, "step": self.step,
            "net": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "seconds": [self.train_seconds, self.track_seconds, self.test_seconds],
            "world": self.dist.world, "config": self.cfg.to_dict(),
            "rows": list(self.rows),  # the history up to here: a resume rebuilds metrics.csv from it
        })

    def load_checkpoint(self, ckpt: dict) -> None:
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.net.load_state_dict(ckpt["net"])
        self.opt.load_state_dict(ckpt["optimizer"])  # moves the state to the parameters' device
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.train_seconds, self.track_seconds, self.test_seconds = ckpt["seconds"]

    # -------------------------------------------------------------------- the loop
    def run(self) -> None:
        """Train to ``config.epochs`` (or divergence / interrupt), one metrics row every track_every epochs."""
        cfg, d = self.cfg, self.dist
        ckpt_every = cfg.checkpoint_every or 10 * cfg.track_every
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.epochs, initial=self.epoch, unit="epoch", dynamic_ncols=True, leave=True)
        with torch_threads(self.threads), _SigintFlag() as sigint:
            try:
                if not self.rows:
                    self._record(self._row(None))
                else:
                    self._last_good = (self.epoch, self.step, self._state_copy())
                while self.epoch < cfg.epochs and not d.any(sigint.set or self._stop):
                    self._consistent = False  # until the epoch and its row are complete
                    t0 = time.perf_counter()
                    ell_sum = float(d.all_sum(self._train_epoch()))  # synchronizes the device: real timing
                    self.train_seconds += time.perf_counter() - t0
                    if not math.isfinite(ell_sum):
                        self._diverged("training loss")
                        break
                    if self.epoch % cfg.track_every == 0 or self.epoch == cfg.epochs:
                        row = self._row(ell_sum)
                        if not math.isfinite(row["objective"]):
                            self._diverged("objective")
                            break
                        self._record(row)
                    self._consistent = True
                    if self.epoch % ckpt_every == 0 and self.epoch < cfg.epochs:
                        self.checkpoint()
                if self.status == "running" and self.epoch < cfg.epochs:
                    raise KeyboardInterrupt  # Ctrl-C or the callback asked to stop (on any process)
            except KeyboardInterrupt:
                self.status = "interrupted"
                self.message = f"interrupted at epoch {self.epoch}; run again with resume to continue"
                if self._consistent:
                    self.checkpoint()
                else:  # a second Ctrl-C mid-epoch: back to the last row; the checkpoint on disk stays as it is
                    epoch, self.step, state = self._last_good
                    self.net.load_state_dict(state)
                    self.message = (f"interrupted during epoch {self.epoch + 1}; kept the model of epoch {epoch}; run "
                                    "again with resume to continue from the last checkpoint")
                    self.epoch = epoch
                raise
            finally:
                if self.bar is not None:
                    self.bar.close()
        if self.status == "running":
            self.status = "complete"
            self.message = f"completed {self.epoch} epochs"
            self.checkpoint()


# ---------------------------------------------------------------------------------------------- public API
def load_model(run_dir, device="cpu") -> tuple[TrainConfig, nn.Module]:
    """The config and the trained NCNet (weights.pt) of a training run directory, on ``device``.

    Raises FileNotFoundError when the folder holds no finished run, RunFolderError (a ValueError) naming the
    file when config.json or weights.pt is corrupt or does not belong to a training run.
    """
    from nclab.results import read_saved_config

    store = RunStore(run_dir)
    if not store.has(CONFIG) or not store.has(WEIGHTS):
        raise FileNotFoundError(f"{store.path} holds no finished training run (config.json and weights.pt)")
    cfg = TrainConfig.from_dict(read_saved_config(store.path, kind=KIND))
    try:
        w = store.load_torch(WEIGHTS)
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        net = build_model(cfg.arch, tuple(w["in_shape"]), w["num_classes"], cfg.depth, cfg.width, cfg.bias,
                          mlp_depth=cfg.mlp_depth, mlp_width=cfg.mlp_width, batch_norm=cfg.batch_norm)
        net = net.to(device=device, dtype=dtype)  # before loading: float64 weights must not pass through float32
        net.load_state_dict(w["state_dict"])
    except Exception as exc:  # torch.load / load_state_dict on a damaged or foreign file
        msg = str(exc).strip().splitlines()
        raise RunFolderError(f"{store.file(WEIGHTS)} is not a readable model of this run ({type(exc).__name__}"
                             f"{': ' + msg[0] if msg else ''}); delete it and rerun with --resume to rebuild it from "
                             "the checkpoint, or --overwrite to start over") from None
    return cfg, net


def train(
    config: TrainConfig | None = None,
    *,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    **options,
) -> TrainResult:
    """Train a backbone + deep linear head and track NC on the training set as it trains.

    Parameters
    ----------
    config : TrainConfig, or None to build one from ``options`` (keyword arguments of
        :func:`nclab.experiments.make_train_config`: ``preset=NAME`` and any TrainConfig field).
    out : path of the run directory, or None to write nothing.
    resume : continue the run in ``out`` (same config required; a finished run is loaded, not re-run).
    overwrite : replace whatever run ``out`` holds.
    progress : show a progress bar (epochs, objective, NC1, accuracy).
    callback : called with each metrics row (dict) on process 0; raising KeyboardInterrupt stops the run
        at that epoch, checkpointed (then KeyboardInterrupt propagates, as after Ctrl-C).

    Under torchrun every process calls train() with the same arguments; the group is created here
    (gloo on CPU, nccl on CUDA), each process takes a contiguous shard of every global batch, and
    process 0 writes ``out``.

    Returns
    -------
    TrainResult (``.final["nc1_L1"]``, ``.history``, ``.model``, ...)

    Examples
    --------
    >>> r = train(dataset="digits", counts=[30] * 10, arch="mlp", mlp_depth=2, width=32, depth=2,
    ...           epochs=2, batch_size=100, test_per_class=0)
    >>> r.status, len(r.history), sorted(k for k in r.final if k.startswith("nc1"))
    ('complete', 3, ['nc1_L1', 'nc1_L2'])
    """
    from nclab import __version__
    from nclab.environment import environment

    if config is None:
        config = make_train_config(**options)
    elif options:
        raise ValueError("give either a TrainConfig or keyword options, not both")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if resume and overwrite:
        raise ValueError("give resume or overwrite, not both")
    d = setup(config.device)
    store = None
    try:
        ckpt, finished, error, rows = None, False, None, []
        if out is not None and d.main:
            try:
                store, ckpt, finished = open_run(out, config.to_dict(), kind=KIND, resume=resume,
                                                 overwrite=overwrite, finished=FINISHED)
                rows = resume_rows(store, ckpt, key="epoch") if ckpt is not None else []
            except (ValueError, OSError) as exc:
                error = exc
        if d.active:  # process 0 decided; the others follow (and raise the same error)
            error, finished, ckpt, rows = d.broadcast((error, finished, ckpt, rows))
        if error is not None:
            raise error
        if finished:
            return _result_from_store(config, out, d)
        trainer = Trainer(config, store=store if d.main else None, dist=d, callback=callback, progress=progress)
        if store is not None:
            if ckpt is None:
                store.write_rows([])  # no usable checkpoint: start over, empty table
            store.write_config(config.to_dict(), kind=KIND, version=__version__)
            env = environment()
            env.update(world_size=d.world, device=str(d.device), threads_used=trainer.threads)
            store.write_environment(env)
            if trainer.prediction is not None:
                store.write_json("prediction.json", trainer.prediction.to_dict())
        if ckpt is not None:
            try:
                trainer.load_checkpoint(ckpt)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise RunFolderError(f"{RunStore(out).file(CHECKPOINT)} does not fit this run ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}); use --overwrite to start "
                                     "over") from None
            trainer.rows = list(rows)
        try:
            trainer.run()
        finally:
            if store is not None:
                _write_outputs(trainer, store)
        return TrainResult(
            config=config, run_dir=None if out is None else RunStore(out).path, status=trainer.status,
            epoch=trainer.epoch, final=trainer.rows[-1] if trainer.rows else {}, history=list(trainer.rows),
            model=trainer.net, target=trainer.target, prediction=trainer.prediction, seconds=trainer.train_seconds,
            track_seconds=trainer.track_seconds, test_seconds=trainer.test_seconds, message=trainer.message,
            extra={"target_note": trainer.target_note, "world_size": d.world},
        )
    finally:
        if store is not None:
            store.unlock()
        d.close(synchronize=sys.exc_info()[0] is None)  # no exception in flight: every process got here


def _result_from_store(cfg: TrainConfig, out, d: Dist) -> TrainResult:
    store = RunStore(out)
    summary = store.read_json(SUMMARY)
    _, net = load_model(out, device=d.device)
    rows = store.read_rows()
    return TrainResult(config=cfg, run_dir=store.path, status=summary["status"], epoch=summary["epoch"],
                       final=rows[-1] if rows else {}, history=rows, model=net, target=summary.get("target", ""),
                       message=summary.get("message", ""), extra={"reused": True})


def _write_outputs(trainer: Trainer, store: RunStore) -> None:
    t = trainer
    store.save_torch(WEIGHTS, {
        "epoch": t.epoch,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in t.net.state_dict().items()},
        "in_shape": list(t.data.in_shape), "num_classes": t.data.num_classes,
    })
    t.tracker.save(store, epoch=t.rows[-1]["epoch"] if t.rows else None)  # grams.json: the report's heatmaps
    rows = t.rows
    per_epoch = t.train_seconds / max(t.epoch, 1)
    n_rows = max(len(rows), 1)
    store.write_json(SUMMARY, {
        "status": "failed" if t.status == "running" else t.status,  # an exception escaped the loop
        "message": t.message,
        "epoch": t.epoch, "epochs": t.cfg.epochs, "step": t.step,
        "rows": len(rows),  # metrics.csv's row count, checked when a finished run is reopened
        "world_size": t.dist.world, "device": str(t.device),
        "num_train": t.data.train.n, "counts": list(t.data.train.counts),
        "num_test": None if t.data.test is None else t.data.test.n,
        "target": t.target, "target_note": t.target_note,
        "predicted_objective": None if t.prediction is None else float(t.prediction.objective),
        "train_seconds": t.train_seconds, "track_seconds": t.track_seconds, "test_seconds": t.test_seconds,
        "seconds_per_epoch": per_epoch,
        "track_fraction": (t.track_seconds / n_rows) / per_epoch if per_epoch > 0 else None,
        "initial": rows[0] if rows else {},
        "final": rows[-1] if rows else {},
    })
