"""Class-imbalanced subsets: which samples to keep, given how many of each class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# The paper's imbalanced CIFAR-10 experiment (N = 3000), class k keeps PAPER_IMBALANCED_COUNTS[k] samples.
PAPER_IMBALANCED_COUNTS = (100, 100, 200, 200, 300, 300, 400, 400, 500, 500)


def imbalanced_subset(y, counts: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Indices of a random subset with exactly ``counts[k]`` samples of class k.

    Parameters
    ----------
    y : Tensor or array-like of shape (N,)
        Integer labels in 0..K-1, K = len(counts).
    counts : sequence of K ints >= 0
        Samples to keep per class, e.g. ``PAPER_IMBALANCED_COUNTS``.
    seed : int, default 0
        Same seed, labels and counts -> same indices (numpy's PCG64 generator, independent of torch's RNG).

    Returns
    -------
    indices : Tensor of shape (sum(counts),), int64, sorted ascending (dataset order is kept)

    Raises
    ------
    ValueError
        Negative or non-integer counts, labels outside 0..K-1, or a class with fewer samples than asked.

    Examples
    --------
    >>> idx = imbalanced_subset([0, 1, 0, 1, 1], counts=[1, 2], seed=0)
    >>> len(idx)
    3
    """
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"y must be a 1-d array of integer labels, got dtype {labels.dtype} shape {labels.shape}")
    counts = list(counts)
    if not counts:
        raise ValueError("counts must name at least one class")
    for k, c in enumerate(counts):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"counts must be integers, got {c!r} for class {k}")
        if c < 0:
            raise ValueError(f"counts must be >= 0, got {c} for class {k}")
    K = len(counts)
    if labels.size and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must lie in 0..{K - 1} for {K} counts, found {labels.min()}..{labels.max()}")
    available = np.bincount(labels, minlength=K)
    short = [k for k in range(K) if counts[k] > available[k]]
    if short:
        k = short[0]
        raise ValueError(f"class {k} has {available[k]} samples but counts asks for {counts[k]}")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == k))[: counts[k]] for k in range(K)]
    return torch.from_numpy(np.sort(np.concatenate(keep)).astype(np.int64))
