"""The metrics row of :class:`nclab.ufm.snapshot.Snapshotter` for B runs at once (numpy over a leading run axis).

Same columns, same order, same definitions; values agree with the per-run Snapshotter to round-off (a test
compares them). The inputs are the sufficient statistics of each run -- weights, class means, the within-class
scatter sum, H H^T and the objective -- so a batched trainer never forms per-run tensors for a snapshot.
The power-of-two rescalings of :mod:`nclab.metrics` (overflow guards) are left out: a run with entries beyond
``SAFE`` (or with a non-finite objective) gets its row from the per-run Snapshotter instead.
"""

from __future__ import annotations

import numpy as np

SAFE = 1e100  # |entries| above this (or nonzero ones below 1/SAFE): the per-run Snapshotter, overflow-proof
RTOL = 1e-6  # nclab.metrics.functional.DEFAULT_RTOL: singular values of the centred means counted as zero


def _fro(a: np.ndarray) -> np.ndarray:
    """Frobenius norm over the trailing two axes (or one for vectors)."""
    axes = (-2, -1) if a.ndim >= 3 else (-1,)
    return np.sqrt((a * a).sum(axis=axes))


def _ndist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|| a/||a|| - b/||b|| || per run; NaN where either is zero."""
    na, nb = _fro(a), _fro(b)
    ok = (na > 0) & (nb > 0)
    shape = (-1,) + (1,) * (a.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = _fro(a / na.reshape(shape) - b / nb.reshape(shape))
    return np.where(ok, d, np.nan)


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    nb = _fro(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nb > 0, _fro(a - b) / np.where(nb > 0, nb, 1.0), np.nan)


def _spectrum(g: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(g, compute_uv=False), axis=-1)[..., ::-1]


class BatchSnapshotter:
    """Metric rows of B runs (one Snapshotter each, same K and depth), prepared once per batch."""

    def __init__(self, snapshotters):
        self.snaps = list(snapshotters)
        s0 = self.snaps[0]
        self.B, self.K, self.M = len(self.snaps), s0.problem.K, s0.problem.M
        self.N = s0.problem.N
        self.center = s0.center
        self.counts = np.stack([s.counts for s in self.snaps])  # (B, K)
        self.f_star = np.array([s.f_star for s in self.snaps])
        self.unique = np.array([s.unique for s in self.snaps])
        self.targets = {k: np.stack([s.targets[k] for s in self.snaps]) for k in ("WWt", "HtH", "WH")}
        self.unsafe_targets = unsafe(*self.targets.values())  # (B,) predicted Grams beyond the batched path's range
        self.lam_w = np.array([s.problem.lambda_w for s in self.snaps])  # (B, M)
        self.lam_h = np.array([s.problem.lambda_h for s in self.snaps])
        K = self.K
        nan = np.full((K, K), np.nan)
        self.scales, self.layer_targets = [], []
        for j in range(self.M):
            sc = [s.scales[j] for s in self.snaps]
            self.scales.append((np.array([c is not None for c in sc]),
                                np.stack([nan if c is None else c for c in sc])))
            lt = [s.layer_targets[j] for s in self.snaps]
            self.layer_targets.append((np.array([t is not None for t in lt]),
                                       np.stack([nan if t is None else t[0] for t in lt]),
                                       np.stack([nan if t is None else t[1] for t in lt])))
        has_b = [s.bias_star is not None for s in self.snaps]
        self.bias_star = np.stack([s.bias_star for s in self.snaps]) if all(has_b) else None
        if any(has_b) and not all(has_b):
            raise ValueError("runs of one batch must all have a predicted bias or none")

    def subset(self, idx) -> BatchSnapshotter:
        return BatchSnapshotter([self.snaps[i] for i in idx])

    # ------------------------------------------------------------------------------------------------ pieces
    def _gram(self, name, measured, target=None):
        """(shape distance, relative error) per run, as Snapshotter._gram (spectra where Grams are not unique)."""
        target = self.targets[name] if target is None else target
        shape, rel = _ndist(measured, target), _rel(measured, target)
        if not self.unique.all():
            a, b = _spectrum(measured), _spectrum(np.nan_to_num(target))
            shape = np.where(self.unique, shape, _ndist(a, b))
            rel = np.where(self.unique, rel, _rel(a, b))
        return shape, rel

    def _nc1(self, scatter, m_j, W, j):
        """NC1 of layer j (0-based) per run: tr(P^T S P)/N with P the K-space factor of Sigma_B^+ mapped to H."""
        w = self.counts / self.counts.sum(axis=1, keepdims=True)
        c = m_j - np.einsum("bk,bkd->bd", w, m_j)[:, None, :]
        _, s, vt = np.linalg.svd(c, full_matrices=False)  # s (B, q), vt (B, q, d_j)
        q = s.shape[1]
        s0 = s[:, 0]
        r = np.minimum((s > RTOL * s0[:, None]).sum(axis=1), self.K - 1)
        r = np.where(s0 > 0, r, 0)
        keep = np.arange(q)[None, :] < r[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
        proj = np.swapaxes(vt, 1, 2) * inv[:, None, :]  # (B, d_j, q)
        for wj in reversed(W[:j]):
            proj = np.swapaxes(wj, 1, 2) @ proj  # -> (B, d, q)
        t = np.einsum("bdq,bdq->b", proj, scatter @ proj)
        return np.where(r > 0, np.maximum(t / self.N, 0.0), np.nan)

    # ------------------------------------------------------------------------------------------------ rows
    def rows(self, weights, means, scatter, hht, objective, reg, bias=None) -> list[dict]:
        """Rows (dicts in Snapshotter's column order) from float64 numpy arrays over the run axis:
        weights [W_j (B, d_{j+1}, d_j)], means (B, K, d), scatter (B, d, d) the within-class scatter sum,
        hht (B, d, d) = H H^T, objective (B,), reg (B,) the decay terms, bias (B, K) or None."""
        B, K, M = self.B, self.K, self.M
        f = np.asarray(objective, dtype=np.float64)
        gap = f - self.f_star
        rel_gap = gap / np.maximum(np.abs(self.f_star), 1e-300)
        loss = f - reg
        W = weights
        parts = [W[-1]]
        for w in reversed(W[:-1]):
            parts.append(parts[-1] @ w)
        parts = parts[::-1]
        cols: dict[str, np.ndarray] = {}
        m_j = means
        wmean = self.counts / self.counts.sum(axis=1, keepdims=True)

        def centred(m):
            return m - np.einsum("bk,bkd->bd", wmean, m)[:, None, :] if self.center else m

        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for j in range(M):
                if j > 0:
                    m_j = m_j @ np.swapaxes(W[j - 1], 1, 2)
                cols[f"nc1_L{j + 1}"] = self._nc1(scatter, m_j, W, j)
                mc = centred(m_j)
                if j > 0:
                    has, tw, th = self.layer_targets[j]
                    pj = parts[j]
                    cols[f"nc2_w_L{j + 1}"] = np.where(has, self._gram("WWt", pj @ np.swapaxes(pj, 1, 2), tw)[0],
                                                       np.nan)
                    cols[f"nc2_h_L{j + 1}"] = np.where(has, self._gram("HtH", mc @ np.swapaxes(mc, 1, 2), th)[0],
                                                       np.nan)
                has, sc = self.scales[j]
                cols[f"nc3_L{j + 1}"] = np.where(has, _ndist(parts[j], np.nan_to_num(sc) @ mc), np.nan)
            m = centred(means)
            w_full = parts[0]
            measured = {"WWt": w_full @ np.swapaxes(w_full, 1, 2), "HtH": m @ np.swapaxes(m, 1, 2),
                        "WH": w_full @ np.swapaxes(m, 1, 2)}
            for key, col in (("WWt", "nc2_w"), ("HtH", "nc2_h"), ("WH", "nc3")):
                cols[col], cols[f"err_{key}"] = self._gram(key, measured[key])
            cols["nc2_w_L1"], cols["nc2_h_L1"] = cols["nc2_w"], cols["nc2_h"]
            norms = {}
            for key, col in (("WWt", "w"), ("HtH", "h")):
                a = np.sqrt(np.clip(np.diagonal(measured[key], axis1=1, axis2=2), 0, None))
                b = np.sqrt(np.clip(np.diagonal(self.targets[key], axis1=1, axis2=2), 0, None))
                bmax = b.max(axis=1)
                cols[f"{col}_norm_err"] = np.where(bmax > 0, np.abs(a - b).max(axis=1) / np.where(bmax > 0, bmax, 1),
                                                   np.nan)
                norms[col] = a
            lam = self.lam_w
            cols["balance_H"] = _rel(lam[:, 0, None, None] * (np.swapaxes(W[0], 1, 2) @ W[0]),
                                     self.lam_h[:, None, None] * hht)
            for j in range(M - 1):
                cols[f"balance_L{j + 1}"] = _rel(lam[:, j + 1, None, None] * (np.swapaxes(W[j + 1], 1, 2) @ W[j + 1]),
                                                 lam[:, j, None, None] * (W[j] @ np.swapaxes(W[j], 1, 2)))
            if self.bias_star is not None and bias is not None:
                cols["bias_err"] = _fro(bias - self.bias_star) / _fro(self.bias_star)
        order = []
        for j in range(M):
            order.append(f"nc1_L{j + 1}")
            if j > 0:
                order += [f"nc2_w_L{j + 1}", f"nc2_h_L{j + 1}"]
            order.append(f"nc3_L{j + 1}")
        order += ["nc2_w", "err_WWt", "nc2_h", "err_HtH", "nc3", "err_WH", "nc2_w_L1", "nc2_h_L1", "w_norm_err",
                  "h_norm_err"]
        tail = ["balance_H"] + [f"balance_L{j + 1}" for j in range(M - 1)] + (["bias_err"] if "bias_err" in cols
                                                                            else [])
        out = []
        for i in range(B):
            row = {"objective": float(f[i]), "gap": float(gap[i]), "rel_gap": float(rel_gap[i]),
                   "loss": float(loss[i])}
            if np.isfinite(f[i]):
                for k in order:
                    row[k] = float(cols[k][i])
                for k in range(K):
                    row[f"w_norm_{k}"] = float(norms["w"][i, k])
                for k in range(K):
                    row[f"h_norm_{k}"] = float(norms["h"][i, k])
                for k in tail:
                    row[k] = float(cols[k][i])
            out.append(row)
        return out


def unsafe(*arrays) -> np.ndarray:
    """Per run (leading axis): True where an entry is beyond the batched path's safe range (see SAFE)."""
    bad = None
    for a in arrays:
        if a is None:
            continue
        x = np.abs(a.reshape(a.shape[0], -1))
        b = (x > SAFE).any(axis=1) | ((x > 0) & (x < 1 / SAFE)).any(axis=1) | ~np.isfinite(x).all(axis=1)
        bad = b if bad is None else bad | b
    return bad
