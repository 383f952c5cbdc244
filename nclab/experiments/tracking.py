"""NC metrics of a deep linear head, per layer, from ONE set of class statistics of the head input.

The head is linear, so the input of layer j is H_j = A_j h with A_j = W_{j-1}..W_1 (d_j, d_1), A_1 = I.
Its class means are mu_k A_j^T and its within-class scatter A_j S A_j^T, S the (d_1, d_1) scatter of the
head input h: one ClassStats on h (float64, streamed and all-reduced) gives every layer exactly, without
a d_j x d_j scatter per layer. NC1 at layer j is tr(P^T A_j S A_j^T P)/N with P (d_j, r) from the layer's
centred means (nclab.metrics.nc1_projector, metrics.md pitfall 11), and layer j pairs its features with the
partial product W_M..W_j (pitfall 13).

Columns of a metrics row (M layers, K classes; the names every run kind shares, nclab.report.columns):

    nc1_L{j}      tr(Sigma_W Sigma_B^+)/K of the features entering layer j; NaN where undefined (all class
                  means equal: no between-class spread, e.g. the zero solution)
    nc2_w, nc2_h  end-to-end NC2 of the classifier W = W_M..W_1 and of the head input's class means
                  (equal to nc2_w_L1, nc2_h_L1)
    nc3           || W M_1^T/||.|| - G_wh || (W = W_M..W_1; the same at every layer)
    nc2_w_L{j}    || P_j P_j^T/||.|| - G_w,j ||, P_j = W_M..W_j (nc2_w_L1: the end-to-end classifier)
    nc2_h_L{j}    || M_j M_j^T/||.|| - G_h,j || class-mean Gram of layer j against the target
    nc3_L{j}      || P_j/||P_j|| - C_j M_j/||C_j M_j|| || (self-duality, C_j the theory's scale or I)
    w_norm_{k}, h_norm_{k}    ||w_k|| (rows of W) and ||mu_k|| (head-input class means, centred as below)
    w_norm_err, h_norm_err    max_k | ||w_k|| - ||w_k*|| | / max_k ||w_k*|| ("theory" target only)

:meth:`HeadTracker.save` writes the learned K x K Grams of the last row (end to end and per layer) to the
run's ``grams.json``, for the report's heatmaps.

Targets: "etf" (centred means, G = (I - 11^T/K)/sqrt(K-1)), "of" (uncentred, I/sqrt(K)) or "theory",
the global minimizer of the deep linear UFM with the run's counts, head widths and decays
(nclab.predict: ETF with a bias, OF bias-free balanced, GOF imbalanced, with its per-layer Grams and
NC3 scales; means centred by the sample-weighted global mean exactly when the head has a bias).
"""

from __future__ import annotations

import numpy as np

from nclab.experiments.config import TrainConfig
from nclab.metrics import ClassStats, nc1_from_scatter, nc1_projector, nc3_dual, target_gram
from nclab.metrics.functional import normalized_distance


def choose_target(cfg: TrainConfig, counts, widths) -> tuple[str, object, str]:
    """(name, prediction or None, note). ``cfg.target == "auto"``: the theory's minimizer for MSE with
    lambda_w, lambda_h > 0 (when it is nonzero and its Grams are unique), else ETF with a bias or CE,
    OF bias-free."""
    named = "etf" if (cfg.bias or cfg.loss == "ce") else "of"
    if cfg.target != "auto":
        return cfg.target, None, "chosen by the config"
    if cfg.loss != "mse":
        return named, None, "CE: the simplex ETF (nclab.predict covers balanced CE only as a candidate search)"
    if min(cfg.lambda_w) <= 0 or cfg.lambda_h <= 0:
        return named, None, "no theory without weight and feature decay; the named frame is used"
    from nclab.theory import predict

    pred = predict(list(counts), widths=list(widths), lambda_w=list(cfg.lambda_w), lambda_h=cfg.lambda_h,
                   bias=cfg.bias, loss="mse")
    if not any(pred.classes["active"]):  # O(K): no dense K x K Gram (large K)
        return named, None, f"the theory's minimizer is zero ({pred.geometry}); the named frame is used"
    if not pred.gram_unique:
        return named, None, f"the theory's Grams are not unique ({pred.geometry}); the named frame is used"
    return "theory", pred, f"nclab.predict: {pred.geometry}"


class HeadTracker:
    """Turns (ClassStats of the head input, head weights) into the metric columns above.

    Parameters
    ----------
    target : "etf", "of" or "theory"; prediction : nclab.theory Prediction for "theory"
    counts : (K,) training samples per class; depth : M
    """

    def __init__(self, target: str, prediction, counts, depth: int, bias: bool):
        K = len(counts)
        self.target, self.pred, self.M = target, prediction, depth
        self.counts = np.asarray(counts, dtype=np.float64)
        if target == "theory":
            lay = prediction.layers
            self.center = bool(bias)
            self.g_h = [np.asarray(lay[j]["mean_gram"], dtype=np.float64) for j in range(depth)]
            self.g_w = [np.asarray(lay[j]["partial_gram"], dtype=np.float64) for j in range(depth)]
            self.scale = [np.asarray(lay[j]["nc3_scale"], dtype=np.float64) for j in range(depth)]
            self.g_wh = np.asarray(prediction.WH, dtype=np.float64)
        else:
            g = target_gram(target, K)
            self.center = target == "etf"
            self.g_h, self.g_w, self.scale, self.g_wh = [g] * depth, [g] * depth, [None] * depth, g
        self.last: dict | None = None  # the learned Grams of the latest call (for save)

    def columns(self) -> list[str]:
        M, K = range(1, self.M + 1), range(len(self.counts))
        norms = ["w_norm_err", "h_norm_err"] if self.target == "theory" else []
        return ([f"nc1_L{j}" for j in M] + ["nc2_w", "nc2_h", "nc3"] + [f"nc2_w_L{j}" for j in M]
                + [f"nc2_h_L{j}" for j in M] + [f"nc3_L{j}" for j in M] + norms
                + [f"w_norm_{k}" for k in K] + [f"h_norm_{k}" for k in K])

    def __call__(self, stats: ClassStats, weights) -> dict:
        """Metric columns from the head-input stats (moments="scatter", all-reduced) and [W_1..W_M]."""
        W = [w.detach().to("cpu").double().numpy() for w in weights]  # W_j (d_{j+1}, d_j)
        S = stats.scatter.cpu().numpy()  # (d_1, d_1), sum over samples (not divided by N)
        means = stats.means.cpu().numpy()  # (K, d_1)
        n, N = self.counts, float(self.counts.sum())
        parts = [W[-1]]  # P_j = W_M..W_j
        for w in reversed(W[:-1]):
            parts.append(parts[-1] @ w)
        parts = parts[::-1]
        row, A, hm1 = {}, np.eye(means.shape[1]), None
        nc2_h, nc2_w, nc3_l, layers = {}, {}, {}, []
        for j in range(self.M):
            if j > 0:
                A = W[j - 1] @ A  # (d_j, d_1)
            mj = means @ A.T  # (K, d_j), layer-j class means
            proj, _, rank, mu_g = nc1_projector(mj, n)  # (d_j, r), r = rank used for Sigma_B^+
            # no between-class spread (all class means equal): NC1 is undefined, not perfect
            row[f"nc1_L{j + 1}"] = nc1_from_scatter(S, A.T @ proj, N) if rank > 0 else float("nan")
            hm = mj - mu_g if self.center else mj
            hm1 = hm if j == 0 else hm1
            mean_gram, partial_gram = hm @ hm.T, parts[j] @ parts[j].T
            nc2_h[f"nc2_h_L{j + 1}"] = normalized_distance(mean_gram, self.g_h[j])
            nc2_w[f"nc2_w_L{j + 1}"] = normalized_distance(partial_gram, self.g_w[j])
            nc3_l[f"nc3_L{j + 1}"] = nc3_dual(parts[j], hm, scale=self.scale[j])
            layers.append({"layer": j + 1, "mean_gram": mean_gram, "partial_gram": partial_gram,
                           "cross_gram": parts[j] @ hm.T})
        wh = parts[0] @ hm1.T
        row["nc2_w"], row["nc2_h"] = nc2_w["nc2_w_L1"], nc2_h["nc2_h_L1"]
        row["nc3"] = normalized_distance(wh, self.g_wh)
        row.update(nc2_w)
        row.update(nc2_h)
        row.update(nc3_l)
        w_norms = np.sqrt(np.clip(np.diag(layers[0]["partial_gram"]), 0, None))  # ||w_k||, rows of W_M..W_1
        h_norms = np.sqrt(np.clip(np.diag(layers[0]["mean_gram"]), 0, None))  # ||mu_k|| of the head input
        if self.target == "theory":
            row["w_norm_err"] = _max_rel(w_norms, self.pred.WWt)
            row["h_norm_err"] = _max_rel(h_norms, self.pred.HtH)
        row.update({f"w_norm_{k}": float(v) for k, v in enumerate(w_norms)})
        row.update({f"h_norm_{k}": float(v) for k, v in enumerate(h_norms)})
        self.last = {"WWt": layers[0]["partial_gram"], "HtH": layers[0]["mean_gram"], "WH": wh, "layers": layers}
        return row

    def save(self, store, epoch=None) -> None:
        """Write the learned Grams of the latest call to the run's ``grams.json`` (nothing before a first call).

        Keys: ``WWt``, ``HtH``, ``WH`` (K x K, end to end: W = W_M..W_1 and the head input's class means),
        ``layers`` (per layer j: ``mean_gram`` Hbar_j Hbar_j^T, ``partial_gram`` P_j P_j^T, ``cross_gram``
        P_j Hbar_j^T), ``centered`` (means centred by the global mean), ``target``, ``epoch`` (given by the
        caller: the epoch of the latest metrics row).
        """
        if self.last is None:
            return
        doc = {"epoch": epoch, "target": self.target, "centered": bool(self.center), **self.last}
        store.write_json("grams.json", doc)  # results.atomic_write_json: ndarrays become lists


def _max_rel(norms: np.ndarray, predicted_gram) -> float:
    """max_k | ||x_k|| - ||x_k*|| | / max_k ||x_k*|| (NaN when every predicted norm is 0)."""
    b = np.sqrt(np.clip(np.diag(np.asarray(predicted_gram, dtype=np.float64)), 0, None))
    return float(np.abs(norms - b).max() / b.max()) if b.max() > 0 else float("nan")
