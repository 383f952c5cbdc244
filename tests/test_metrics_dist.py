"""torch.distributed: two gloo processes with half the data each == one process with all of it."""

import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nclab.metrics import ClassStats, nc_metrics


def _data():
    rng = np.random.default_rng(0)
    K, D = 5, 8
    y = rng.integers(0, K, 301)
    y[y == 4] = 3  # class 4 empty everywhere
    y[:150][y[:150] == 2] = 1  # class 2 only on rank 1
    H = rng.standard_normal((K, D))[y] * 3 + 0.2 * rng.standard_normal((len(y), D)) + 10.0
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    return H.astype(np.float32), y, W, b


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        H, y, W, b = _data()
        lo, hi = (0, 150) if rank == 0 else (150, len(y))
        # float64 products: the reduction over processes is then exact to float64 round-off (the default
        # product in the features' float32 would differ by the batches' float32 rounding, ~1e-7)
        stats = ClassStats(5, dim=H.shape[1], gemm_dtype=torch.float64)
        for i in range(lo, hi, 40):
            j = min(i + 40, hi)
            stats.update(torch.from_numpy(H[i:j]), y[i:j])
        stats.all_reduce()
        second = stats.second_pass(W, b)
        second.update(H[lo:hi], y[lo:hi]).all_reduce()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = stats.compute(W, b)
            two = stats.compute(W, b, second=second)
        torch.save({"one": one.values, "two": two.values, "pc": two.per_class["nc1"],
                    "means": stats.means, "scatter": stats.scatter}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed gloo")
def test_two_gloo_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    H, y, W, b = _data()
    with pytest.warns(UserWarning):
        ref = nc_metrics(torch.from_numpy(H), y, W, b, num_classes=5, gemm_dtype=torch.float64)
    full = ClassStats(5, gemm_dtype=torch.float64).update(torch.from_numpy(H), y)
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(got["means"], full.means, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["scatter"], full.scatter, rtol=1e-10, atol=1e-10)
        for k, v in ref.values.items():
            assert got["two"][k] == pytest.approx(v, rel=1e-9, abs=1e-14), k
            if k != "nc4" and k not in ("accuracy", "ncc_accuracy"):
                assert got["one"][k] == pytest.approx(v, rel=1e-9, abs=1e-14), k
        np.testing.assert_allclose(got["pc"], ref.per_class["nc1"], rtol=1e-9)
