"""Training data for a run: whole splits as tensors on the device, seeded batches, contiguous shards.

No DataLoader: the NC experiments use small datasets without augmentation, so each split is one tensor
(N, C, H, W) moved to the device once, and a batch is an index gather. Data order depends only on
(seed, epoch), never on the process count, so a run on 1 or P processes sees the same global batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nclab.data import imbalanced_subset, load_dataset
from nclab.experiments.config import TrainConfig


@dataclass
class Split:
    """X (N, C, H, W) and y (N,) int64 on the run's device; counts (K,) samples per class."""

    X: torch.Tensor
    y: torch.Tensor
    counts: tuple

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


@dataclass
class RunData:
    train: Split
    test: Split | None
    num_classes: int
    in_shape: tuple  # (C, H, W)


def _select(y: torch.Tensor, counts, seed: int) -> torch.Tensor:
    """Indices (sorted) of a subset with counts[k] samples of class k among the classes 0..K-1."""
    K = len(counts)
    pool = torch.nonzero(y < K).flatten()  # only the first K classes take part
    return pool[imbalanced_subset(y[pool], counts, seed=seed)]


def load_run_data(cfg: TrainConfig, device, dtype: torch.dtype) -> RunData:
    """The training subset (``cfg.counts``, seeded) and the test split (classes 0..K-1, optionally
    at most ``cfg.test_per_class`` each), as ``dtype`` tensors on ``device``."""
    K = cfg.num_classes
    kw = dict(channels=cfg.channels, size=cfg.size)
    root = cfg.data_root if cfg.dataset != "digits" else None
    X, y = load_dataset(cfg.dataset, root, "train", **kw)
    idx = _select(y, cfg.counts, cfg.seed) if cfg.counts is not None else torch.nonzero(y < K).flatten()
    train = _split(X, y, idx, K, device, dtype)
    test = None
    if cfg.test_per_class != 0:
        Xt, yt = load_dataset(cfg.dataset, root, "test", **kw)
        if cfg.test_per_class is None:
            tidx = torch.nonzero(yt < K).flatten()
        else:
            have = torch.bincount(yt, minlength=K)[:K].tolist()
            n = min([cfg.test_per_class, *have])  # at most what the smallest test class holds
            tidx = _select(yt, [n] * K, cfg.seed + 1)
        test = _split(Xt, yt, tidx, K, device, dtype)
    return RunData(train, test, K, tuple(train.X.shape[1:]))


def _split(X, y, idx, K, device, dtype) -> Split:
    Xs = X[idx].to(device=device, dtype=dtype).contiguous()  # (n, C, H, W), a copy: no expand views left
    ys = y[idx].to(device)
    counts = tuple(int(c) for c in torch.bincount(y[idx], minlength=K).tolist())
    return Split(Xs, ys, counts)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Global batches of one epoch: a permutation seeded by (seed, epoch) cut into ceil(n / B) nearly
    equal parts (sizes differ by at most 1; no dropped or tiny last batch). batch_size 0: one full batch
    in dataset order."""
    if batch_size == 0 or batch_size >= n:
        return [np.arange(n)]
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.array_split(perm, -(-n // batch_size))


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [lo, hi) share of n items for one process: no padding, no duplicates (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)
