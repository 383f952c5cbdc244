"""The Frobenius norms that the pairwise metrics divide by (nclab.metrics.pairwise.gram_norm, cross_norm): from
D x D Grams where K > D, from K x K blocks where K <= D (issue 12: no D x D buffer for a handful of classes).
Both paths against the dense float64 definition, over one and several tiles, with and without the offset, with
magnitudes whose squared Gram entries overflow float64, and without touching the caller's rows."""

import numpy as np
import pytest
import torch

from nclab.metrics import nc_metrics
from nclab.metrics import pairwise as pw


def rows(a):
    return pw.Rows(torch.as_tensor(np.asarray(a, dtype=np.float64)))


@pytest.mark.parametrize("K,D", [(3, 8), (7, 4), (6, 6), (1, 5)])
@pytest.mark.parametrize("tile", [1, 2, 16])
@pytest.mark.parametrize("shifted", [False, True])
def test_gram_and_cross_norms_equal_the_dense_definition(K, D, tile, shifted):
    rng = np.random.default_rng(K * 100 + D * 10 + tile)
    Rn, Wn, off = rng.standard_normal((K, D)), rng.standard_normal((K, D)), rng.standard_normal(D)
    offset = torch.as_tensor(off) if shifted else None
    sr = rows(Rn).summary(tile, offset)
    sw = rows(Wn).summary(tile)
    assert (sr["gram"] is None) == (K <= D)  # the D x D Gram only where it is the cheaper route
    Rp = Rn + off if shifted else Rn
    assert pw.gram_norm(sr, shifted) == pytest.approx(np.linalg.norm(Rp @ Rp.T), rel=1e-13)
    assert pw.cross_norm(sw, sr, shifted) == pytest.approx(np.linalg.norm(Wn @ Rp.T), rel=1e-13)


@pytest.mark.parametrize("scale", [2.0 ** 295, 2.0 ** -295])
def test_block_norms_neither_overflow_nor_underflow(scale):
    """Rows reach the pairwise code with entries up to 2^+-300 (larger ones are rescaled by a power of two): a
    Gram entry of 2^590 squares to 2^1180 (overflow), one of 2^-590 to 2^-1180 (underflow). Blocks are scaled
    by the largest row norm first."""
    rng = np.random.default_rng(0)
    Rn, Wn = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    sr, sw = rows(Rn * scale).summary(2), rows(Wn * scale).summary(2)
    assert sr["gram"] is None
    ref_g, ref_c = np.linalg.norm(Rn @ Rn.T), np.linalg.norm(Wn @ Rn.T)
    assert pw.gram_norm(sr) / scale / scale == pytest.approx(ref_g, rel=1e-13)
    assert pw.cross_norm(sw, sr, False) / scale / scale == pytest.approx(ref_c, rel=1e-13)


def test_zero_rows_give_zero_norms():
    sz, sr = rows(np.zeros((3, 5))).summary(3), rows(np.ones((3, 5))).summary(3)
    assert pw.gram_norm(sz) == 0.0
    assert pw.cross_norm(sz, sr, False) == 0.0 and pw.cross_norm(sr, sz, False) == 0.0


def test_nc_metrics_leaves_a_float64_classifier_untouched_and_matches_the_gram_route(monkeypatch):
    """A float64 W's blocks are the caller's own rows (no copy): the block route must not scale them in place.
    And the metrics through K x K blocks equal those through D x D Grams (forced by a summary that always
    builds them) to round-off."""
    g = torch.Generator().manual_seed(3)
    K, D, N = 5, 12, 200
    y = torch.arange(N) % K
    H = torch.randn(K, D, generator=g, dtype=torch.float64)[y] + 0.3 * torch.randn(N, D, generator=g,
                                                                                 dtype=torch.float64)
    W, b = torch.randn(K, D, generator=g, dtype=torch.float64), torch.randn(K, generator=g, dtype=torch.float64)
    W0 = W.clone()
    real = pw.Rows.summary

    def with_grams(self, tile, offset=None, grams=None):  # the K > D route at any K
        return real(self, tile, offset, grams=True)

    for target in ("etf", "of"):
        fast = nc_metrics(H, y, W, b, target=target)
        assert torch.equal(W, W0)
        monkeypatch.setattr(pw.Rows, "summary", with_grams)
        slow = nc_metrics(H, y, W, b, target=target)
        monkeypatch.setattr(pw.Rows, "summary", real)
        for key in ("nc2_h", "nc2_w", "nc3"):
            assert fast[key] == pytest.approx(slow[key], rel=1e-10, abs=1e-14), (target, key)
