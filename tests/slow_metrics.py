"""Slow, obvious float64 references for the metrics tests (class loops, no shortcuts)."""

import numpy as np


def slow_stats(H, y, K):
    """counts, means, m2, scatter by explicit loops over classes, float64."""
    H = np.asarray(H, dtype=np.float64)
    D = H.shape[1]
    counts, means, m2, S = np.zeros(K), np.zeros((K, D)), np.zeros(K), np.zeros((D, D))
    for k in range(K):
        Hk = H[y == k]
        counts[k] = len(Hk)
        if len(Hk):
            means[k] = Hk.mean(0)
            dk = Hk - means[k]
            m2[k] = (dk * dk).sum()
            S += dk.T @ dk
    return counts, means, m2, S
