"""Benchmark: the paper's synthetic UFM experiment, end to end (targets: <= 5 s per SGD run, <= 2 s L-BFGS).

Run: python benchmarks/simulate.py [--depths 1,3,6] [--dtype float64]

Per depth M, the paper's configuration (K = 4, n = 100, d = 64, lambda = 5e-4, full-batch SGD momentum 0.9,
lr 0.1, init N(0, 0.1^2), 30,000 steps, a metrics snapshot every 100 steps) timed as ``nclab.simulate``
with a run directory (predict + training + 301 snapshots + checkpoints + files), against a bare eager
PyTorch loop (autograd through the same objective, torch.optim.SGD, no snapshots, same thread count)
timed in the same process on ``--bare-steps`` steps and scaled to 30,000. Then float64 L-BFGS from the
same random start until the relative gap to f* is <= 1e-9.

Batched (``--batch 64``, target >= 20x; ``--device cuda`` on a GPU): B runs of the paper configuration at depth
``--batch-depth`` (seeds 0..B-1, lambda_W = lambda_H cycling over 5e-4, 6e-4, 7e-4, 8e-4), each with its own run
directory, trained by one ``nclab.ufm.batched.simulate_batch`` call (``--workers``: its worker processes, default 0
= automatic, what a user gets: the idle cores, each training a share of the runs as one batch), against
``--sequential`` of the same runs through ``nclab.simulate`` one after another in the same process (their mean time
per run times B: the sequential throughput). ``--workers 1`` is the one-process batch. The objectives of those runs
are compared (relative difference, float64). On the CPU it also prints two floors of a batched run and the ceiling
of the ratio each gives against the sequential time of the same command: every FLOP (the reduced form's products)
at the rate a plain batched matmul of these shapes reaches on one cache-sized chunk plus one pass over the
parameters per step (the update), and every FLOP at the dense 1024 x 1024 GEMM peak with no pass at all.
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
from nclab.ufm.batched import simulate_batch
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


def step_rates(cfgs, steps: int = 200) -> tuple[str, float, dict]:
    """Where a batched SGD step stands: its FLOP rate (the reduced form's products) against plain batched matmuls
    of the same shapes (the whole batch, and one cache-sized chunk of it as the engine's ops see), a dense
    1024 x 1024 GEMM and a plain elementwise update over the same parameters, timed here, one thread. Returns
    (text, FLOPs per run-step, {floor name: seconds per run-step on one core})."""
    from nclab.ufm.batched import BatchUFM, hyper_key
    from nclab.ufm.trainer import Trainer

    with torch_threads(1), torch.no_grad():
        eng = BatchUFM([Trainer(c) for c in sorted(cfgs, key=hyper_key)])  # as simulate_batch orders a batch
        B, K, M, d = eng.B, eng.K, eng.M, eng.dims[0]
        r = eng.X.shape[1] if eng.X is not None else eng.N  # P's columns (reduced) or N (direct)
        macs = 3 * (M - 1) * K * d * d + 3 * K * d * r + 3 * K * K * d  # per run and step, equal widths
        eng.advance(20, 0, None)
        t0 = time.perf_counter()
        eng.advance(steps, 0, None)
        t_step = (time.perf_counter() - t0) / steps
        kw = dict(dtype=eng.dtype)
        a, w, o = torch.randn(B, K, d, **kw), torch.randn(B, d, d, **kw), torch.empty(B, K, d, **kw)
        q, big = torch.randn(B, d, K, **kw), torch.empty(B, d, d, **kw)
        flat, buf = eng.flat.clone(), eng.flat.clone()

        def best(f, n=50):
            f()
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            return (time.perf_counter() - t0) / n

        t_bmm = best(lambda: torch.bmm(a, w, out=o))
        t_outer = best(lambda: torch.bmm(q, a, out=big))
        t_axpy = best(lambda: flat.add_(buf, alpha=1e-30))
        # the same on operands of one cache-sized chunk (what the engine's ops see), per run
        c = max(ch.B for ch in eng.chunks)
        ac, wc, oc = torch.randn(c, K, d, **kw), torch.randn(c, d, d, **kw), torch.empty(c, K, d, **kw)
        fc, bc = flat[: flat.numel() * c // B].clone(), buf[: flat.numel() * c // B].clone()
        t_bmm_c = best(lambda: torch.bmm(ac, wc, out=oc), n=500) / c
        t_axpy_c = best(lambda: fc.add_(bc, alpha=1e-30), n=500) / c
        sq = torch.randn(1024, 1024, **kw)
        t_dense = best(lambda: sq @ sq, n=5)
    gflops = 2 * macs * B / t_step / 1e9
    gb = 3 * flat.numel() * flat.element_size() / t_axpy / 1e9
    mm = 2 * B * K * d * d / 1e9
    dense = 2 * 1024 ** 3 / t_dense
    rate_c = mm / B * 1e9 / t_bmm_c  # FLOP/s of a chunk's plain bmm
    text = (f"batched step ({B} runs, {len(eng.chunks)} chunks, 1 thread): {t_step * 1e6 / B:.1f} us per "
            f"run-step, {gflops:.1f} GFLOP/s | plain bmm ({B},{K},{d})x({B},{d},{d}) {mm / t_bmm:.1f} GFLOP/s "
            f"(chunks of {c}: {rate_c / 1e9:.1f}), outer ({B},{d},{K})x({B},{K},{d}) {mm / t_outer:.1f} GFLOP/s, "
            f"dense 1024^2 GEMM {dense / 1e9:.1f} GFLOP/s, p += a*q over all parameters {gb:.1f} GB/s "
            f"({t_axpy * 1e6 / B:.1f} us per run; chunks of {c}: {t_axpy_c * 1e6:.1f} us per run)")
    # per run-step, one core: every FLOP at a chunk's plain-bmm rate plus one pass over the parameters (the
    # update), and every FLOP at the dense GEMM peak with no pass at all
    floors = {"plain bmm rate of a chunk + one update pass": 2.0 * macs / rate_c + t_axpy_c,
              "dense GEMM peak, no update pass": 2.0 * macs / dense}
    return text, 2.0 * macs, floors


def batched(args) -> bool:
    """The batched case against sequential nclab.simulate calls, in this process; True when >= 20x."""
    B, M = args.batch, args.batch_depth
    lams = (5e-4, 6e-4, 7e-4, 8e-4)
    cfgs = [preset_config(args.preset, M, dtype=args.dtype, steps=args.steps, seed=s, device=args.device,
                          lambda_w=lams[s % 4], lambda_h=lams[s % 4]) for s in range(B)]
    k = max(1, min(args.sequential, B))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = simulate_batch(cfgs, [os.path.join(tmp, f"batch/seed-{s}") for s in range(B)], workers=args.workers)
        t_batch = time.perf_counter() - t0
        t0 = time.perf_counter()
        seq = [simulate(c, out=os.path.join(tmp, f"seq/seed-{i}")) for i, c in enumerate(cfgs[:k])]
        t_seq = (time.perf_counter() - t0) / k * B
    n_workers = res[0].extra.get("workers", 1)  # what simulate_batch chose
    diff = max(abs(a.final["objective"] - b.final["objective"]) / abs(b.final["objective"]) for a, b in zip(res, seq))
    ratio = t_seq / t_batch
    train = sum(r.seconds for r in res)
    snaps = sum(r.snapshot_seconds for r in res)
    statuses = sorted({r.status for r in res})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.device == "cpu":
        text, flops, floors = step_rates(cfgs)
        print(text)
        # the ceiling of the ratio on this machine: each floor (one core) shared by every core, against the
        # sequential time measured above
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        for name, per_step in floors.items():
            floor = per_step * args.steps / cores
            print(f"  floor at the {name} on {cores} cores: {floor:.3f} s/run ({flops * args.steps / 1e9:.1f} "
                  f"GFLOP per run) -> at most {t_seq / B / floor:.1f}x over sequential")
    print(f"batched M={M}: {B} runs x {args.steps} steps ({args.dtype} on {args.device}, snapshots every 100, "
          f"run folders, "
          f"{n_workers} worker process(es)) in {t_batch:.1f} s (training {train:.1f} s, snapshots {snaps:.1f} s summed "
          f"over the workers, rest: set-up and files) = "
          f"{t_batch / B:.2f} s/run | sequential nclab.simulate {t_seq / B:.2f} s/run (mean of {k}) -> "
          f"{ratio:.1f}x throughput | statuses {statuses}, objective vs sequential max rel diff {diff:.1e} | "
          f"load average {load:.1f} [{'PASS' if ratio >= 20 else 'FAIL'} >= 20x]")
    return ratio >= 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="1,3,6")
    ap.add_argument("--preset", default="paper-balanced-of")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--bare-steps", type=int, default=3000, help="steps of the bare loop (scaled to --steps)")
    ap.add_argument("--batch", type=int, default=64, help="runs of the batched case (0: skip it)")
    ap.add_argument("--batch-depth", type=int, default=3)
    ap.add_argument("--sequential", type=int, default=4, help="runs timed one by one for the sequential baseline")
    ap.add_argument("--workers", type=int, default=0, help="simulate_batch's worker processes (0: automatic)")
    ap.add_argument("--device", default="cpu", help="device of the batched case and its sequential baseline "
                    "(cuda: benchmarks/gpu_check.sh runs --batch 1000 --no-single --device cuda)")
    ap.add_argument("--no-single", action="store_true", help="skip the single-run and L-BFGS rows")
    args = ap.parse_args()
    depths = [] if args.no_single else [int(d) for d in args.depths.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"default threads {torch.get_num_threads()}, load average {load:.1f}")
    simulate(preset_config(args.preset, 2, steps=50, per_class=5, widths=8))  # warm-up: imports, first calls
    simulate_batch([preset_config(args.preset, 2, steps=50, per_class=5, widths=8, seed=s) for s in range(2)])
    ok = True
    if args.batch:
        ok &= batched(args)
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
                  f"({bare / args.steps * 1e3:.3f} ms/step, from {args.bare_steps} steps) -> {bare / total:.1f}x "
                  f"(training loop alone {bare / r.seconds:.1f}x) | "
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
