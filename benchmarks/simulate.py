"""Benchmark: the paper's synthetic UFM experiment, end to end (targets: <= 5 s per SGD run, <= 2 s L-BFGS).

Run: python benchmarks/simulate.py [--depths 1,3,6] [--dtype float64]

Per depth M, the paper's configuration (K = 4, n = 100, d = 64, lambda = 5e-4, full-batch SGD momentum 0.9,
lr 0.1, init N(0, 0.1^2), 30,000 steps, a metrics snapshot every 100 steps) timed as ``nclab.simulate``
with a run directory (predict + training + 301 snapshots + checkpoints + files), against a bare eager
PyTorch loop (autograd through the same objective, torch.optim.SGD, no snapshots, same thread count)
timed in the same process on ``--bare-steps`` steps and scaled to 30,000. Then float64 L-BFGS from the
same random start until the relative gap to f* is <= 1e-9.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from nclab.theory import labels_from_counts, ufm_objective_torch
from nclab.ufm import simulate
from nclab.ufm.presets import preset_config
from nclab.ufm.trainer import auto_threads, torch_threads


def bare_loop(cfg, steps: int) -> float:
    """Seconds for ``steps`` steps of the plain eager loop a user would write (no metrics)."""
    p = cfg.problem
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    g = torch.Generator().manual_seed(cfg.seed)
    dims = list(p.widths) + [p.K]
    ws = [torch.nn.Parameter(cfg.init_std * torch.randn(dims[j + 1], dims[j], generator=g, dtype=dtype))
          for j in range(p.M)]
    H = torch.nn.Parameter(cfg.init_std * torch.randn(dims[0], p.N, generator=g, dtype=dtype))
    y = torch.as_tensor(labels_from_counts(p.counts))
    opt = torch.optim.SGD([*ws, H], lr=cfg.lr, momentum=cfg.momentum)
    with torch_threads(auto_threads(cfg)):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            ufm_objective_torch(ws, H, y, p.lambda_w, p.lambda_h, None, p.loss, p.K).backward()
            opt.step()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="1,3,6")
    ap.add_argument("--preset", default="paper-balanced-of")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--bare-steps", type=int, default=3000, help="steps of the bare loop (scaled to --steps)")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"default threads {torch.get_num_threads()}")
    simulate(preset_config(args.preset, 2, steps=50, per_class=5, widths=8))  # warm-up: imports, first calls
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for M in depths:
            cfg = preset_config(args.preset, M, dtype=args.dtype, steps=args.steps)
            t0 = time.perf_counter()
            r = simulate(cfg, out=os.path.join(tmp, f"sgd-{M}"))
            total = time.perf_counter() - t0
            bare = bare_loop(cfg, args.bare_steps) * args.steps / args.bare_steps
            f = r.final
            ok &= total <= 5.0
            print(f"M={M} SGD {args.steps} steps, {len(r.history)} snapshots, {args.dtype}, "
                  f"{auto_threads(cfg)} thread(s): nclab.simulate {total:.2f} s total (training {r.seconds:.2f} s, "
                  f"snapshots {r.snapshot_seconds:.2f} s) | bare autograd loop {bare:.1f} s "
                  f"({bare / args.steps * 1e3:.3f} ms/step, from {args.bare_steps} steps) -> {bare / total:.1f}x | "
                  f"rel gap {f['rel_gap']:.1e}, NC1 {f['nc1_L1']:.1e}, NC2(W) {f['nc2_w']:.1e}, NC3 {f['nc3']:.1e} "
                  f"[{'PASS' if total <= 5.0 else 'FAIL'} <= 5 s]")
        for M in depths:
            cfg = preset_config(args.preset, M, dtype="float64", optimizer="lbfgs", lr=1.0, steps=20000,
                                snapshot_every=10, stop_rel_gap=1e-9)
            t0 = time.perf_counter()
            r = simulate(cfg, out=os.path.join(tmp, f"lbfgs-{M}"))
            total = time.perf_counter() - t0
            hit = r.final["rel_gap"] <= 1e-9
            ok &= total <= 2.0 and hit
            print(f"M={M} float64 L-BFGS: relative gap {r.final['rel_gap']:.1e} after {r.step} iterations in "
                  f"{total:.2f} s total ({r.status}) [{'PASS' if total <= 2.0 and hit else 'FAIL'} <= 2 s, <= 1e-9]")
    print("all targets met" if ok else "some targets missed (timings drift on shared machines: rerun)")


if __name__ == "__main__":
    main()
