"""Benchmark: the cost of online NC tracking, and the trainer's epoch throughput against a plain PyTorch loop.

Run: python benchmarks/train.py [--preset cpu-mlp-balanced] [--reps 15] [--set KEY=VALUE ...]

On the preset's model and data (default: the MLP CPU preset, Fashion-MNIST subset), measured in the same
process, interleaved, median over ``--reps`` repetitions:

* one training epoch of ``nclab.experiments.Trainer`` (exact objective with feature decay and head decay),
* one NC metrics row: the extra eval-mode pass over the training set with the head-input hook, float64
  ClassStats (scatter), per-layer NC1/NC2/NC3 against the target, the last-good-state copy
  (target: <= 20% of an epoch's training time); the test-accuracy pass is reported separately,
* one epoch of the plain loop a user would write: same model (same init), same tensors, same batches and
  optimizer, ``nn.MSELoss`` on one-hot targets, no metrics; once without regularization and once with the
  same objective as nclab (feature decay and head weight decay written inline).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
from torch import nn

from nclab.experiments import Trainer, make_train_config
from nclab.experiments.data import epoch_batches
from nclab.ufm.trainer import torch_threads


def plain_loop(trainer: Trainer, same_objective: bool = False):
    """A plain PyTorch epoch on a copy of the trainer's model, data and batches; returns run(epoch).
    same_objective: add the feature decay and the head's weight decay inline, as a user would."""
    cfg, tr = trainer.cfg, trainer.data.train
    net = copy.deepcopy(trainer.net).train()
    opt = (torch.optim.Adam(net.parameters(), lr=cfg.lr) if cfg.optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum))
    mse = nn.MSELoss()
    K = trainer.data.num_classes

    def run(epoch: int) -> None:
        for b in epoch_batches(tr.n, cfg.batch_size, cfg.seed, epoch):
            idx = torch.as_tensor(b, device=tr.X.device)
            x, y = tr.X[idx], tr.y[idx]
            h = net.backbone(x)
            out = net.head(h)
            loss = mse(out, nn.functional.one_hot(y, K).to(out.dtype)) if cfg.loss == "mse" \
                else nn.functional.cross_entropy(out, y)
            if same_objective:
                loss = loss * K / 2 + cfg.lambda_h * tr.n / (2 * len(b)) * (h * h).sum()
                loss = loss + sum(lam / 2 * (w * w).sum() for lam, w in zip(cfg.lambda_w, net.head.weights()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if tr.X.device.type == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-mlp-balanced")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset field, e.g. --set device=cuda --set dataset=digits")
    args = ap.parse_args()
    over = dict(kv.split("=", 1) for kv in args.set)
    for k, v in over.items():
        for kind in (int, float):
            try:
                over[k] = kind(v)
                break
            except ValueError:
                pass
    cfg = make_train_config(preset=args.preset, **over)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {cfg.threads or torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    t = Trainer(cfg)
    n = t.data.train.n
    print(f"preset {args.preset}: {cfg.arch} (head M = {cfg.depth}, width {cfg.width}) on {n} {cfg.dataset} images, "
          f"batch {cfg.batch_size or n}, {cfg.optimizer}; test set {0 if t.data.test is None else t.data.test.n}")
    plain, plain_obj = plain_loop(t), plain_loop(t, same_objective=True)
    epoch_s, plain_s, obj_s, track_s, test_s = [], [], [], [], []
    with torch_threads(cfg.threads):
        t._train_epoch()  # warm-up: first calls, allocations
        t._record(t._row(0.0))
        plain(0)
        plain_obj(0)
        for rep in range(args.reps):
            t0 = time.perf_counter()
            float(t._train_epoch())  # the float() synchronizes a GPU
            epoch_s.append(time.perf_counter() - t0)
            te0 = t.test_seconds
            t0 = time.perf_counter()
            row = t._row(0.0)
            t._record(row)
            total = time.perf_counter() - t0
            test_s.append(t.test_seconds - te0)
            track_s.append(total - test_s[-1])
            t0 = time.perf_counter()
            plain(rep + 1)
            plain_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain_obj(rep + 1)
            obj_s.append(time.perf_counter() - t0)
    med = statistics.median
    e, p, o, k, s = med(epoch_s), med(plain_s), med(obj_s), med(track_s), med(test_s)
    frac = k / e
    print(f"training epoch: nclab {e * 1e3:.1f} ms ({n / e:.0f} samples/s) | plain PyTorch loop (nn.MSELoss) "
          f"{p * 1e3:.1f} ms ({n / p:.0f} samples/s) -> nclab throughput {p / e:.2f}x of it | plain loop with the "
          f"same objective (feature + head decay inline) {o * 1e3:.1f} ms -> {o / e:.2f}x")
    print(f"NC metrics row (eval pass over {n} training samples + float64 stats + per-layer metrics): {k * 1e3:.1f} ms "
          f"= {100 * frac:.1f}% of an epoch [{'PASS' if frac <= 0.20 else 'FAIL'} <= 20%]")
    if t.data.test is not None:
        print(f"test-accuracy pass ({t.data.test.n} samples, reported separately): {s * 1e3:.1f} ms "
              f"= {100 * s / e:.1f}% of an epoch")
    print(f"with track_every = {cfg.track_every}: NC tracking adds {100 * frac / cfg.track_every:.1f}% to training "
          f"(+{100 * s / e / cfg.track_every:.1f}% test pass)")
    print(f"last row: NC1 at the head input {row['nc1_L1']:.3g}, train acc {row['train_acc']:.3f}")


if __name__ == "__main__":
    main()
