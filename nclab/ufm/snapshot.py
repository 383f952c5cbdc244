"""One metrics row of a UFM run, computed with ``nclab.metrics`` against the theory's prediction.

Columns (M layers, K classes; layer j = 1..M is the layer whose INPUT features are H_j = W_{j-1}..W_1 H):

    objective, gap (f - f*), rel_gap ((f - f*)/|f*|), loss (data term)
    nc1_L{j}          NC1 = tr(Sigma_W Sigma_B^+)/K of the features entering layer j; NaN where the
                      class means coincide (Sigma_B = 0, e.g. the zero solution): undefined, not perfect
    nc2_w, nc2_h      || G/||G|| - G*/||G*|| || for W W^T (W = W_M..W_1) and the class means' Gram,
                      G* the predicted Gram (OF, ETF or GOF with the theory's norms)
    nc2_w_L{j}        the same for P_j P_j^T, P_j = W_M..W_j, against the predicted partial Gram
                      (nc2_w_L1 == nc2_w)
    nc2_h_L{j}        the same for the class means of layer j against the predicted layer-j mean Gram
                      (nc2_h_L1 == nc2_h)
    nc3               the same for W Hbar against the predicted W H
    nc3_L{j}          || P_j/||P_j|| - C_j Hbar_j^T/||C_j Hbar_j^T|| ||, C_j the theory's scale
    err_WWt, err_HtH, err_WH   relative Frobenius error against the predicted Grams (scale included)
    w_norm_err, h_norm_err     max_k | ||w_k|| - ||w_k*|| | / max_k ||w_k*|| (same for class means)
    w_norm_{k}, h_norm_{k}     per-class norms ||w_k|| and ||h_k||
    balance_H, balance_L{j}    ||lam_1 W_1^T W_1 - lam_H H H^T|| / ||lam_H H H^T||, and
                               ||lam_{j+1} W_{j+1}^T W_{j+1} - lam_j W_j W_j^T|| / ||lam_j W_j W_j^T||
    bias_err          ||b - b*|| / ||b*|| (MSE with bias)

Class means are centred by the sample-weighted global mean when the problem has a bias (the theory's
means have global mean 0 there), uncentred otherwise (OF/GOF targets). Where the predicted Grams are
not unique (bottleneck ties: only their spectra are), Gram distances compare sorted eigenvalues.
The names are the same for every run kind: nclab.report.columns documents the scheme once.
"""

from __future__ import annotations

import numpy as np
import torch

from nclab.metrics import ClassStats, nc1_from_scatter, nc1_projector, nc3_dual
from nclab.metrics.compare import gram_error, norm_error
from nclab.metrics.functional import exp2, global_mean, normalized_distance
from nclab.theory import labels_from_counts, ufm_objective_torch
from nclab.ufm.model import UFM


def _spectrum(g: np.ndarray) -> np.ndarray:
    """Sorted singular values (eigenvalues for a PSD Gram) as a vector."""
    return np.sort(np.linalg.svd(g, compute_uv=False))[::-1]


class Snapshotter:
    """Computes metric rows for one (problem, prediction); the prediction's targets are prepared once."""

    def __init__(self, prediction):
        self.pred = pred = prediction
        self.problem = p = prediction.problem
        self.labels = torch.as_tensor(labels_from_counts(p.counts))
        self.counts = np.asarray(p.counts, dtype=np.float64)
        self.center = bool(p.bias)
        self.unique = bool(pred.gram_unique)
        self.f_star = float(pred.objective)
        self.targets = {k: np.asarray(getattr(pred, k), dtype=np.float64) for k in ("WWt", "HtH", "WH")}
        self.scales, self.layer_targets = [], []
        for layer in pred.layers:
            layer = layer if isinstance(layer, dict) else {}
            c = layer.get("nc3_scale")
            self.scales.append(None if c is None else np.asarray(c, dtype=np.float64))
            grams = [layer.get(k) for k in ("partial_gram", "mean_gram")]
            self.layer_targets.append(None if any(g is None for g in grams)
                                      else [np.asarray(g, dtype=np.float64) for g in grams])
        self.twin = UFM(p, dtype=torch.float64, device="cpu")
        self.bias_star = None if (pred.bias is None or p.loss != "mse") else np.asarray(pred.bias, dtype=np.float64)

    def _gram(self, name: str, measured: np.ndarray, target: np.ndarray | None = None) -> tuple[float, float]:
        """(shape distance, relative error) of a measured Gram against the predicted one (``target``, default
        the end-to-end Gram ``name``)."""
        target = self.targets[name] if target is None else target
        if not self.unique:  # only the spectrum is determined
            a, b = _spectrum(measured), _spectrum(target)
            nb = np.linalg.norm(b)
            return normalized_distance(a, b), float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan")
        e = gram_error(measured, target)
        return e["shape"], e["rel"]

    def __call__(self, weights, H, bias=None) -> dict:
        """Metrics of parameters W_j (d_{j+1}, d_j), H (d, N), b (K,) (tensors, any dtype/device).

        Undefined values (e.g. every NC metric at the zero solution) are NaN, without numpy warnings."""
        with np.errstate(all="ignore"):
            return self._row(weights, H, bias)

    def _row(self, weights, H, bias=None) -> dict:
        p = self.problem
        ws, Ht, bt, f, loss = _objective(self.twin, weights, H, bias)
        gap = f - self.f_star
        row: dict = {"objective": f, "gap": gap, "rel_gap": gap / max(abs(self.f_star), 1e-300), "loss": loss}
        if not np.isfinite(f):
            return row
        stats = ClassStats(p.K).update(Ht.T, self.labels)  # means (K, d), pooled within-class scatter (d, d)
        means = stats.means.numpy()
        W = [w.numpy() for w in ws]
        parts = [W[-1]]  # P_j = W_M..W_j, built from the output side
        for w in reversed(W[:-1]):
            parts.append(parts[-1] @ w)
        parts = parts[::-1]
        N = p.N
        # NC1 at layer j without a d_j x d_j scatter: features map linearly, H_j = A_j H with
        # A_j = W_{j-1}..W_1, so tr(P^T A S A^T P) = tr(B^T S B) with B = A_j^T P (d x r), P = V_r S_r^-1
        # NC1 is invariant to rescaling the features and each layer map, so it is computed from the power-of-two
        # rescaled statistics and unit-norm W_j: no overflow or underflow near the zero solution (tiny weights)
        s_means, _, s_scatter, _ = stats.scaled()
        s_means, s_scatter = np.asarray(s_means, dtype=np.float64), np.asarray(s_scatter, dtype=np.float64)
        # ||W_j|| by _fro (exact power-of-two rescaling): np.linalg.norm underflows to 0 for entries ~1e-200
        unit = [w / n if (n := _fro(w)) > 0 else w for w in W]
        m_j, s_m_j, shift = means, s_means, 0
        for j in range(p.M):
            if j > 0:
                m_j = m_j @ W[j - 1].T  # layer-j class means (K, d_j)
                # the scaled layer means, kept at entries ~1 by powers of two (exact; several unit-norm maps can
                # still shrink them towards underflow): means 2^-shift give a projector 2^shift, NC1 4^shift
                s_m_j = s_m_j @ unit[j - 1].T
                top = float(np.abs(s_m_j).max(initial=0.0))
                if not 2.0 ** -200 <= top <= 2.0 ** 200:  # only where it matters: a snapshot costs ~1 ms
                    k = exp2(s_m_j)
                    s_m_j, shift = np.ldexp(s_m_j, -k), shift + k
            with np.errstate(all="ignore"):
                proj, _, rank, _ = nc1_projector(s_m_j, self.counts)  # (d_j, r)
                for w in reversed(unit[:j]):
                    proj = w.T @ proj  # -> (d, r)
            # no between-class spread (all class means equal, e.g. the zero solution): NC1 is undefined
            ok = rank > 0 and bool(np.all(np.isfinite(proj)))
            row[f"nc1_L{j + 1}"] = float(np.ldexp(nc1_from_scatter(s_scatter, proj, N), -2 * shift)) if ok \
                else float("nan")
            mc = m_j - global_mean(m_j, self.counts) if self.center else m_j
            if j > 0:  # layer 1 is the end-to-end pair nc2_w, nc2_h below (the same numbers)
                targets = self.layer_targets[j]
                row[f"nc2_w_L{j + 1}"] = self._gram("WWt", parts[j] @ parts[j].T, targets[0])[0] \
                    if targets is not None else float("nan")
                row[f"nc2_h_L{j + 1}"] = self._gram("HtH", mc @ mc.T, targets[1])[0] \
                    if targets is not None else float("nan")
            row[f"nc3_L{j + 1}"] = nc3_dual(parts[j], mc, scale=self.scales[j]) if self.scales[j] is not None \
                else float("nan")
        m = means - global_mean(means, self.counts) if self.center else means
        w_full = parts[0]
        measured = {"WWt": w_full @ w_full.T, "HtH": m @ m.T, "WH": w_full @ m.T}
        for key, col in (("WWt", "nc2_w"), ("HtH", "nc2_h"), ("WH", "nc3")):
            row[col], row[f"err_{key}"] = self._gram(key, measured[key])
        row["nc2_w_L1"], row["nc2_h_L1"] = row["nc2_w"], row["nc2_h"]
        wn = norm_error(measured["WWt"], self.targets["WWt"])
        hn = norm_error(measured["HtH"], self.targets["HtH"])
        row["w_norm_err"], row["h_norm_err"] = wn["max_rel"], hn["max_rel"]
        for k in range(p.K):
            row[f"w_norm_{k}"] = wn["measured"][k]
        for k in range(p.K):
            row[f"h_norm_{k}"] = hn["measured"][k]
        # balancedness (theory.md 1.1-1.2): lam_{j+1} W_{j+1}^T W_{j+1} = lam_j W_j W_j^T, lam_1 W_1^T W_1 = lam_H H H^T
        lam = p.lambda_w
        hh = p.lambda_h * (Ht @ Ht.T).numpy()
        row["balance_H"] = _rel(lam[0] * W[0].T @ W[0], hh)
        for j in range(p.M - 1):
            row[f"balance_L{j + 1}"] = _rel(lam[j + 1] * W[j + 1].T @ W[j + 1], lam[j] * W[j] @ W[j].T)
        if self.bias_star is not None and bt is not None:
            b = bt.numpy()
            row["bias_err"] = float(np.linalg.norm(b - self.bias_star) / np.linalg.norm(self.bias_star))
        return row


def _objective(twin: UFM, weights, H, bias):
    """(W_j, H, b as float64 CPU tensors, objective f, data loss f - decay) by the hand-written path of ``twin``
    (equal to ufm_objective_torch to ~1e-15 relative, tested; no M d x d x N products)."""
    p = twin.problem
    ws = [w.detach().to("cpu", torch.float64) for w in weights]
    Ht = H.detach().to("cpu", torch.float64)
    bt = None if bias is None else bias.detach().to("cpu", torch.float64)
    twin.set_(ws, Ht, bt)
    f = float(twin.gradient_(with_loss=True))
    reg = 0.5 * sum(lam * float((w * w).sum()) for lam, w in zip(p.lambda_w, ws))
    reg += 0.5 * p.lambda_h * float((Ht * Ht).sum())
    return ws, Ht, bt, f, f - reg


def shared_objective(prediction, weights, H, bias=None) -> float:
    """The objective at given parameters by THE definition (nclab.theory.ufm_objective_torch), float64."""
    p = prediction.problem
    f64 = lambda t: None if t is None else torch.as_tensor(t).detach().to("cpu", torch.float64)  # noqa: E731
    y = torch.as_tensor(labels_from_counts(p.counts))
    return float(ufm_objective_torch([f64(w) for w in weights], f64(H), y, p.lambda_w, p.lambda_h, f64(bias),
                                     p.loss, p.K))


def _fro(a: np.ndarray) -> float:
    """Frobenius norm without underflow or overflow: equal to np.linalg.norm(a) wherever that is exact."""
    n = float(np.linalg.norm(a))
    if 1e-100 < n < 1e100:  # every square that matters is a normal float: the plain norm is exact
        return n
    k = exp2(a)
    return float(np.ldexp(np.linalg.norm(np.ldexp(a, -k)), k))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan")


class ReluSnapshotter:
    """Metric rows of a deep ReLU UFM run (``activation="relu"``), against :func:`nclab.ufm.dnc.references`.

    Columns (layer j = 1..M; H_1 = H the free features, H_j = ReLU(W_{j-1} H_{j-1}) post-activation):

        objective, loss (data term), f_dnc, f_lowrank (the optimized reference configurations' objectives;
        NaN where not built: imbalanced classes or a width < K), gap_dnc = f - f_dnc, gap_lowrank = f - f_lowrank,
        gap / rel_gap against f_best = min(f_dnc, f_lowrank) (negative: descent beat both references)
        nc1_L{j}          NC1 = tr(Sigma_W Sigma_B^+)/K of H_j (NaN where the class means coincide)
        nc2_h_L{j}        || G_j/||G_j|| - D_j/||D_j|| || for the uncentred class-mean Gram G_j of H_j against the DNC
                          configuration's D_j (an orthogonal frame for MSE); NaN for j = 1, where DNC does not fix
                          the Gram (any PSD Gram with equal diagonal and non-positive off-diagonal is optimal)
        nc3_L{j}          || W_j^T W_j/||.|| - Hbar_j Hbar_j^T/||.|| || (rows of W_j aligned with the class means of
                          H_j; 0 at the DNC configuration for MSE, j >= 2)
        rank_means_L{j}   numerical rank of the class-mean matrix Hbar_j (d_j x K), and
        rank_w_L{j}       of W_j: singular values above nclab.ufm.dnc.RANK_RTOL (1e-3) times the largest
    """

    def __init__(self, problem, refs):
        from nclab.ufm.dnc import RANK_RTOL

        self.problem = p = problem
        self.refs = refs
        self.rtol = RANK_RTOL
        self.labels = torch.as_tensor(labels_from_counts(p.counts))
        self.counts = np.asarray(p.counts, dtype=np.float64)
        self.f_dnc, self.f_lowrank, self.f_best = refs.f_dnc, refs.f_lowrank, refs.f_best
        self.dnc_grams = refs.dnc.layer_grams if refs.dnc is not None else [None] * p.M
        self.twin = UFM(p, dtype=torch.float64, device="cpu", activation="relu")

    __call__ = Snapshotter.__call__  # NaN for undefined values, without numpy warnings

    def _row(self, weights, H, bias=None) -> dict:
        from nclab.ufm.dnc import numerical_rank

        p = self.problem
        ws, Ht, bt, f, loss = _objective(self.twin, weights, H, bias)
        fb = self.f_best
        row = {"objective": f, "gap": f - fb, "rel_gap": (f - fb) / max(abs(fb), 1e-300) if np.isfinite(fb)
               else float("nan"), "loss": loss, "f_dnc": self.f_dnc, "f_lowrank": self.f_lowrank,
               "gap_dnc": f - self.f_dnc, "gap_lowrank": f - self.f_lowrank}
        if not np.isfinite(f):
            return row
        feats = Ht
        for j in range(p.M):
            if j > 0:
                feats = torch.relu(ws[j - 1] @ feats)
            stats = ClassStats(p.K).update(feats.T, self.labels)
            s_means, _, s_scatter, _ = stats.scaled()
            s_means, s_scatter = np.asarray(s_means, dtype=np.float64), np.asarray(s_scatter, dtype=np.float64)
            proj, _, rank, _ = nc1_projector(s_means, self.counts)
            ok = rank > 0 and bool(np.all(np.isfinite(proj)))
            row[f"nc1_L{j + 1}"] = nc1_from_scatter(s_scatter, proj, p.N) if ok else float("nan")
            means = stats.means.numpy()  # (K, d_j)
            target = self.dnc_grams[j]
            row[f"nc2_h_L{j + 1}"] = normalized_distance(means @ means.T, target) \
                if (j > 0 and target is not None) else float("nan")
            W = ws[j].numpy()
            row[f"nc3_L{j + 1}"] = _gram_alignment(W, means)
            row[f"rank_means_L{j + 1}"] = numerical_rank(means, self.rtol)
            row[f"rank_w_L{j + 1}"] = numerical_rank(W, self.rtol)
        return row


def _gram_alignment(W: np.ndarray, means: np.ndarray) -> float:
    """|| W^T W/||W^T W|| - M^T M/||M^T M|| ||_F for W (d', d) and class means M (K, d), via K- and d'-sized
    products: <W^T W, M^T M> = ||W M^T||^2, ||W^T W|| = ||W W^T||, ||M^T M|| = ||M M^T||."""
    from nclab.metrics.functional import unit

    W, means = unit(W), unit(means)
    a = float(np.linalg.norm(W @ W.T))
    b = float(np.linalg.norm(means @ means.T))
    if a == 0 or b == 0:
        return float("nan")
    c = float(np.linalg.norm(W @ means.T) ** 2)
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * c / (a * b))))
