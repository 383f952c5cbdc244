"""Benchmark of nclab.metrics: cost of all NC metrics vs one H^T H product, a 1M-sample stream, and the
speed-up over the per-sample outer-product approach of public NC code.

    python benchmarks/metrics.py           # full run (a few minutes on 2 cores)
    python benchmarks/metrics.py --quick   # small sizes, seconds
    python benchmarks/metrics.py --device cuda   # features and statistics on the GPU

Targets (issue 3): N=50,000, D=512, K=10: all metrics <= 1.5x one H^T H (float32); K=1000, D=2048,
N=1,000,000 streamed in batches with peak memory < 2 GB.
Targets (issue 12), each row timed between two float32 H^T H (ratios to their mean, medians over --repeat
rotations, robust to other jobs): nc_metrics two-pass <= 0.5x; ClassStats streamed in batches of 5,000
<= 1.5x; float32 features with noise 1e-5 agree with float64 to 1e-6.
Targets (issue 14, `--scale`): K=8,192, D=256, N=200,000: compute(W) <= half the update pass and <= 0.5 GB
extra; K=32,768, D=1,024, N=10^6 streamed: peak memory within 2x the class statistics plus the D x D scatter
above the process's start, compute(W) <= 60 s. Before issue 14: compute 8x the update pass and +3.1 GB at
K = 8,192 (all pairs as triu_indices, dense K x K float64 matrices); ~57 GB at K = 32,768.

    python benchmarks/metrics.py --scale [--threads 1]   # the issue-14 cases only
    python benchmarks/metrics.py --loaded                # [L] metrics while another process holds a core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nclab.metrics import ClassStats, nc_metrics  # noqa: E402


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # GPU work is asynchronous: time it to completion


def best_of(fn, repeat=5):
    fn()
    _sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return min(ts), float(np.median(ts))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def interleaved(cases: dict, ref, repeat: int, cuda: bool) -> dict:
    """{name: (median ratio to ref, median seconds, median cpu-time ratio or None)}: each rotation runs ref,
    case 1, ref, case 2, ..., ref, and a case's ratio is to the mean of the two runs of `ref` (a float32
    H^T H) around it, `repeat` rotations. The ratio of neighbours is robust to the load other jobs put on the
    machine, and the mean of both sides to what the case before leaves behind (a memory-heavy case can slow
    the H^T H right after it, which flattered the next case when only that one was its reference). The
    CPU-time ratio (single-process CPU seconds) too, on CPU."""
    for fn in [ref, *cases.values()]:
        fn()  # warm-up: allocator, BLAS threads, lazy imports
    _sync()
    wall = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    secs = {k: [] for k in cases}

    def timed(f):
        c0, t0 = time.process_time(), time.perf_counter()
        f()
        _sync()
        return time.perf_counter() - t0, time.process_time() - c0

    for _ in range(repeat):
        before = timed(ref)
        for name, fn in cases.items():
            tc, cc = timed(fn)
            after = timed(ref)
            tr, cr = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            wall[name].append(tc / tr)
            cpu[name].append(cc / cr if cr > 0 else float("nan"))
            secs[name].append(tc)
            before = after
    return {k: (float(np.median(wall[k])), float(np.median(secs[k])),
                None if cuda else float(np.median(cpu[k]))) for k in cases}


def collapsed_accuracy(device="cpu", D=512, K=10, n=1000):
    """Relative NC1 / nc1_trace / cdnv error of the streamed paths on float32 features with within-class noise
    1e-5 around class means of norm ~1, against nc_metrics on the same numbers in float64."""
    rng = np.random.default_rng(0)
    means = rng.standard_normal((K, D)) / np.sqrt(D)
    y = rng.permutation(np.repeat(np.arange(K), n))
    H32 = (means[y] + 1e-5 * rng.standard_normal((K * n, D))).astype(np.float32)
    ref = nc_metrics(H32.astype(np.float64), y)
    out = {}
    for name, kw in (("default (gemm_dtype=None)", {}), ("gemm_dtype=torch.float64", {"gemm_dtype": torch.float64})):
        st = ClassStats(K, D, device=device, **kw)
        for i in range(0, K * n, 5000):
            st.update(torch.from_numpy(H32[i:i + 5000]).to(device), torch.from_numpy(y[i:i + 5000]).to(device))
        m = st.compute()
        out[name] = max(abs(m[k] / ref[k] - 1) for k in ("nc1", "nc1_trace", "cdnv"))
    two = nc_metrics(torch.from_numpy(H32).to(device), torch.from_numpy(y).to(device))
    out["nc_metrics"] = max(abs(two[k] / ref[k] - 1) for k in ("nc1", "nc1_trace", "cdnv"))
    return out


def one_shot(N, D, K, repeat, device="cpu"):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, K, (N,), generator=g)
    H = torch.randn(K, D, generator=g)[y] + 0.1 * torch.randn(N, D, generator=g)  # float32
    W, b = torch.randn(K, D, generator=g), torch.randn(K, generator=g)
    y, H, W, b = (t.to(device) for t in (y, H, W, b))

    def stream(**kw):  # issue 12: batches of 5,000
        def run():
            st = ClassStats(K, D, **kw)
            for i in range(0, N, 5000):
                st.update(H[i:i + 5000], y[i:i + 5000])
            return st
        return run

    cases = {
        "nc_metrics(H, y, W, b), two passes": lambda: nc_metrics(H, y, W, b),
        "nc_metrics(H, y), two passes": lambda: nc_metrics(H, y),
        "nc_metrics(H, y, W, b), gemm_dtype=float64": lambda: nc_metrics(H, y, W, b, gemm_dtype=torch.float64),
        "ClassStats stream, default (features' dtype GEMM)": stream(),
        "ClassStats stream, gemm_dtype=float64": stream(gemm_dtype=torch.float64),
        "ClassStats(K).update(H).compute(W, b)": lambda: ClassStats(K).update(H, y).compute(W, b),
    }
    ratios = interleaved(cases, lambda: H.T @ H, repeat, str(device).startswith("cuda"))
    t_gemm = best_of(lambda: H.T @ H, repeat)
    # per-sample outer products + dense pinv (what public NC code does), on a subset, extrapolated
    n_sub = min(N, 2000)

    def public():
        Hd, yd = H.double(), y
        mu = torch.stack([Hd[yd == k].mean(0) for k in range(K)])
        muG = Hd.mean(0)
        Sw = torch.zeros(D, D, dtype=torch.float64, device=H.device)
        for i in range(n_sub):
            d = Hd[i] - mu[yd[i]]
            Sw += torch.outer(d, d)
        Sb = (mu - muG).T @ (mu - muG) / K
        return np.trace(Sw.cpu().numpy() / N @ np.linalg.pinv(Sb.cpu().numpy())) / K

    t0 = time.perf_counter()
    public()
    _sync()
    t_pub_sub = time.perf_counter() - t0
    t_pinv = best_of(lambda: np.linalg.pinv(np.eye(D) + 0.0), 1)[0]
    t_pub = (t_pub_sub - t_pinv) * N / n_sub + t_pinv
    t_all = ratios["nc_metrics(H, y, W, b), two passes"][1]
    return {"N": N, "D": D, "K": K, "HtH_s": t_gemm, "ratios": ratios,
            "public_extrapolated_s": t_pub, "public_subset": n_sub, "speedup": t_pub / t_all}


# issue 12 goals, as ratios to one float32 H^T H in the same process (issue 3: all metrics <= 1.5)
GOALS = {"nc_metrics(H, y, W, b), two passes": 0.5, "nc_metrics(H, y), two passes": 0.5,
         "nc_metrics(H, y, W, b), gemm_dtype=float64": None,
         "ClassStats stream, default (features' dtype GEMM)": 1.5, "ClassStats stream, gemm_dtype=float64": None,
         "ClassStats(K).update(H).compute(W, b)": None}


def stream_child(N, D, K, B, gemm, device="cpu"):
    torch.manual_seed(0)
    means = torch.randn(K, D).to(device)  # (K, D) float32
    buf = torch.empty(B, D, device=device)
    stats = ClassStats(K, D, gemm_dtype=torch.float64 if gemm == "float64" else torch.float32, device=device)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    done = 0
    while done < N:
        b = min(B, N - done)
        y = torch.randint(0, K, (b,)).to(device)
        x = torch.randn(b, D, out=buf[:b]).mul_(0.1).add_(means[y])  # generated batch by batch
        stats.update(x, y)
        done += b
    _sync()
    t_stream = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = stats.compute()
    t_compute = time.perf_counter() - t1
    print(json.dumps({"N": N, "D": D, "K": K, "batch": B, "gemm": gemm, "stream_s": t_stream,
                      "compute_s": t_compute, "peak_rss_mb": peak_rss_mb(), "rss_before_stream_mb": base,
                      "nc1": m["nc1"], "rank": m.info["rank"]}))


def _vm(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def scale_child(N, D, K, B, device="cpu"):
    """Stream N samples of K classes into ClassStats, then compute(W): times and memory (one process)."""
    torch.manual_seed(0)
    means = torch.randn(K, D).to(device)
    W = torch.randn(K, D).to(device)
    buf = torch.empty(B, D, device=device)
    base = peak_rss_mb()
    stats = ClassStats(K, D, device=device)
    t0 = time.perf_counter()
    done = 0
    while done < N:
        b = min(B, N - done)
        y = torch.randint(0, K, (b,)).to(device)
        stats.update(torch.randn(b, D, out=buf[:b]).mul_(0.3).add_(means[y]), y)
        done += b
    _sync()
    t_update = time.perf_counter() - t0
    before = peak_rss_mb()
    try:  # reset the peak (VmHWM) so that the growth during compute is seen (Linux)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _vm("VmRSS")
    except OSError:
        pass
    t1 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few classes may have no sample
        m = stats.compute(W)
    _sync()
    t_compute = time.perf_counter() - t1
    peak = _vm("VmHWM") if os.path.exists("/proc/self/status") else peak_rss_mb()
    print(json.dumps({"N": N, "D": D, "K": K, "update_s": t_update, "compute_s": t_compute, "base_mb": base,
                      "before_compute_mb": before, "peak_mb": max(peak, peak_rss_mb()), "compute_peak_mb": peak,
                      "stats_mb": stats.nbytes(D) / 2**20,
                      "tile": m.info["tile"], "nc3_method": m.info.get("nc3_method"),
                      "values": {k: m[k] for k in ("nc1", "nc2_h", "gnc2_h", "equiangular_std_h", "unc3", "nc3")}}))


def scale(threads, device):
    cases = [(200_000, 256, 8192, 50_000), (1_000_000, 1024, 32768, 20_000)]
    print(f"\n[issue 14] metrics linear in K (threads={threads}, load {os.getloadavg()})")
    for N, D, K, B in cases:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--scale-child", str(N), str(D), str(K),
                              str(B), device, str(threads)], capture_output=True, text=True, check=True)
        s = json.loads(out.stdout.strip().splitlines()[-1])
        extra = s["compute_peak_mb"] - s["before_compute_mb"]
        print(f"  K={K:,} D={D:,} N={N:,}: update {s['update_s']:.1f} s, compute(W) {s['compute_s']:.1f} s "
              f"(= {s['compute_s'] / s['update_s']:.2f} x update), peak {s['peak_mb']:.0f} MB, +{extra:.0f} MB during "
              f"compute, statistics {s['stats_mb']:.0f} MB, tile {s['tile']}, nc3 {s['nc3_method']}")
        if K == 8192:
            ok = s["compute_s"] <= 0.5 * s["update_s"] and extra <= 512
            print(f"    goal compute <= 0.5 x update and <= 0.5 GB extra: {'PASS' if ok else 'FAIL'} "
                  "(before issue 14: 8x and +3.1 GB)")
        else:
            grown = s["peak_mb"] - s["base_mb"]
            ok = grown <= 2 * s["stats_mb"] and s["compute_s"] <= 60
            print(f"    goal peak - start ({grown:.0f} MB) <= 2 x statistics ({2 * s['stats_mb']:.0f} MB) and compute "
                  f"<= 60 s: {'PASS' if ok else 'FAIL'} (before issue 14: ~57 GB, impossible)")
        print(f"    values: {s['values']}")


def loaded(repeat: int) -> None:
    """[L] nc_metrics and a ClassStats stream while a busy-looping process holds one core: the default (torch
    threads fitted to the idle cores, nclab.environment.fitted_threads) against all of torch's threads (the fitting
    switched off), interleaved in this process, medians over ``repeat`` rounds."""
    import nclab.environment as env

    g = torch.Generator().manual_seed(0)
    N, D, K = 50_000, 512, 10
    y = torch.randint(0, K, (N,), generator=g)
    H = torch.randn(K, D, generator=g)[y] + 0.1 * torch.randn(N, D, generator=g)
    W, b = torch.randn(K, D, generator=g), torch.randn(K, generator=g)

    def stream():
        st = ClassStats(K, D)
        for i in range(0, N, 5000):
            st.update(H[i:i + 5000], y[i:i + 5000])
        return st.compute(W, b)

    cases = {"nc_metrics(H, y)": lambda: nc_metrics(H, y), "nc_metrics(H, y, W, b)": lambda: nc_metrics(H, y, W, b),
             "ClassStats stream + compute(W, b)": stream}
    fitted = env.others_idle_cores
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        times = {(k, m): [] for k in cases for m in ("fitted", "all")}
        for _ in range(repeat + 1):
            for name, fn in cases.items():
                for mode in ("fitted", "all"):
                    env.others_idle_cores = fitted if mode == "fitted" else env.usable_cores
                    t0 = time.perf_counter()
                    fn()
                    times[(name, mode)].append(time.perf_counter() - t0)
        threads_seen = fitted()
    finally:
        env.others_idle_cores = fitted
        busy.kill()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; one core kept busy by another process; fitted threads now: "
          f"{threads_seen}")
    print(f"[L] N={N} D={D} K={K} float32, medians of {repeat} rounds (after one warm-up), same process:")
    for name in cases:
        f, a = (float(np.median(times[(name, m)][1:])) for m in ("fitted", "all"))
        print(f"  {name:36s} fitted threads {f * 1e3:7.1f} ms | all {torch.get_num_threads()} threads "
              f"{a * 1e3:7.1f} ms -> {a / f:.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--stream-child", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--scale-child", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--scale", action="store_true", help="only the issue-14 cases (K = 8,192 and 32,768)")
    ap.add_argument("--loaded", action="store_true", help="only [L]: metrics while another process keeps a core busy")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=7, help="rotations of the interleaved timings in [1]")
    ap.add_argument("--no-stream", action="store_true", help="skip [2], the 1M-sample stream (minutes)")
    ap.add_argument("--device", default="cpu", help="where features and statistics live (cpu, cuda)")
    ap.add_argument("--gemm", choices=["float64", "float32"], default="float64",
                    help="dtype of the stream's per-batch scatter product (statistics stay float64)")
    a = ap.parse_args()
    if a.stream_child:
        N, D, K, B = map(int, a.stream_child[:4])
        return stream_child(N, D, K, B, a.stream_child[4], a.stream_child[5])
    if a.scale_child:
        N, D, K, B = map(int, a.scale_child[:4])
        if int(a.scale_child[5]) > 0:
            torch.set_num_threads(int(a.scale_child[5]))
        return scale_child(N, D, K, B, a.scale_child[4])
    if a.scale:
        return scale(a.threads or torch.get_num_threads(), a.device)
    if a.loaded:
        return loaded(a.repeat)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"cpu_count={os.cpu_count()}, torch {torch.__version__} threads={torch.get_num_threads()}, device={a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else ""))
    print(f"load average {os.getloadavg()} on {os.cpu_count()} cores (other jobs share this machine)")
    N, D, K = (20_000, 256, 10) if a.quick else (50_000, 512, 10)
    r = one_shot(N, D, K, 3 if a.quick else a.repeat, a.device)
    print(f"\n[1] N={N} D={D} K={K}, float32 features; each case timed between two float32 H^T H, "
          f"median over {3 if a.quick else a.repeat} rotations")
    print(f"  one H^T H (float32): best {r['HtH_s'][0] * 1e3:.1f} ms, median {r['HtH_s'][1] * 1e3:.1f} ms")
    print(f"  {'case':44s} {'median':>9s} {'x HtH':>7s} {'cpu x':>6s}  goal")
    ok = True
    for name, (ratio, sec, cpu) in r["ratios"].items():
        goal = GOALS[name]
        verdict = "" if goal is None else f"<= {goal}: {'PASS' if ratio <= goal else 'FAIL'}"
        ok &= goal is None or ratio <= goal
        cpu_s = "   -  " if cpu is None else f"{cpu:6.2f}"
        print(f"  {name:44s} {sec * 1e3:7.1f}ms {ratio:7.2f} {cpu_s}  {verdict}")
    print("  (x HtH: wall-clock ratio; cpu x: CPU-seconds ratio, less sensitive to other jobs' load)")
    acc = collapsed_accuracy(a.device, D=D)
    worst = max(acc.values())
    print("  collapsed regime (float32, noise 1e-5, |mu| ~ 1): largest relative error of nc1/nc1_trace/cdnv vs "
          "float64: " + ", ".join(f"{k} {v:.1e}" for k, v in acc.items()) + f"  <= 1e-6: "
          f"{'PASS' if worst <= 1e-6 else 'FAIL'}")
    ok &= worst <= 1e-6
    print(f"  per-sample outer products + pinv (public approach): {r['public_extrapolated_s']:.1f} s "
          f"(timed on {r['public_subset']} samples, extrapolated to N)  speed-up x{r['speedup']:.0f}")
    ok1 = ok

    if a.no_stream:
        print(f"\noverall [1]: {'PASS' if ok1 else 'FAIL'}")
        return
    N2, D2, K2, B2 = (50_000, 512, 100, 4096) if a.quick else (1_000_000, 2048, 1000, 8192)
    print(f"\n[2] stream K={K2} D={D2} N={N2} in batches of {B2} ({a.gemm} scatter GEMM), separate process")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--stream-child", str(N2), str(D2), str(K2),
                          str(B2), a.gemm, a.device], capture_output=True, text=True, check=True)
    s = json.loads(out.stdout.strip().splitlines()[-1])
    ok2 = s["peak_rss_mb"] < 2048
    gflop = 2 * N2 * D2 * D2 / 1e9
    print(f"  stream {s['stream_s']:.1f} s ({gflop / s['stream_s']:.0f} GFLOP/s of scatter), compute "
          f"{s['compute_s']:.2f} s, NC1={s['nc1']:.3e} rank={s['rank']}")
    print(f"  peak RSS of the whole process {s['peak_rss_mb']:.0f} MB (before streaming "
          f"{s['rss_before_stream_mb']:.0f} MB)  target < 2048 MB: {'PASS' if ok2 else 'FAIL'}")
    print(f"\noverall: {'PASS' if ok1 and ok2 else 'FAIL'}")


if __name__ == "__main__":
    main()
