"""Regression tests for small defects noticed in earlier sessions (one test group per defect)."""

from __future__ import annotations

import numpy as np

from nclab.theory import make_problem
from nclab.theory.ce_imbalanced import DENSE_MAX_K, solve_ce_imbalanced


# --- 1. large-K rank of solve_ce_imbalanced: relative, not absolute, singular-value cut -------------------------
def test_large_k_rank_uses_a_relative_cut_at_large_counts():
    """K = 2049 > DENSE_MAX_K, two equal-count groups with counts ~1e10 (B ~ 1e5): the rounding-level singular
    value of B (~1e-11) passed the old absolute 1e-12 cut and the rank read K, impossible for centred logits.

    Expected rank, from the group structure: Z maps the within-group zero-sum vectors (dimension K - G) to
    alpha_g times themselves and the span of the group indicators into itself by C_gh = m_h a_gh + [g = h] alpha_h,
    two orthogonal invariant pieces, so rank Z = (K - G) [every alpha_g != 0] + rank C (dense SVD, relative tol)."""
    m, n = np.array([1025, 1024]), np.array([10**10, 3 * 10**9])
    counts = [int(n[0])] * int(m[0]) + [int(n[1])] * int(m[1])
    K = len(counts)
    assert K > DENSE_MAX_K
    sol = solve_ce_imbalanced(make_problem(counts, widths=K, lambda_w=5e-14, lambda_h=5e-14, loss="ce"))
    a, alpha = np.asarray(sol.groups["a"]), np.asarray(sol.groups["alpha"])
    assert sol.certified and np.all(np.abs(alpha) > 1.0)
    C = m[None, :] * a + np.diag(alpha)
    assert np.allclose(m @ C, 0.0, atol=1e-9 * np.abs(C).max())  # centred: 1^T Z = 0 (so rank C <= G - 1)
    expected = (K - len(m)) + int(np.linalg.matrix_rank(C))
    assert expected == K - 1
    assert sol.rank == expected
