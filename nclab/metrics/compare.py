"""Measured class means and classifiers against a closed-form prediction (duck-typed nclab.theory).

The prediction needs (attributes or dict keys, each optional): WWt, HtH, WH (K x K), bias (K,),
problem.bias (bool), layers = [{"mean_gram", "partial_gram", "nc3_scale"} for j = 1..M].
Class means are centred by the sample-weighted global mean when the problem has a bias (the theory's
means have global mean 0 there), uncentred otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from nclab.metrics._checks import check_features, check_labels, check_matrix, check_vector
from nclab.metrics.functional import global_mean, normalized_distance
from nclab.metrics.report import partial_products
from nclab.metrics.stats import ClassStats

KEYS = ("WWt", "HtH", "WH", "bias", "layers", "problem")


def _get(obj, key, default=None):
    if isinstance(obj, Mapping):  # dicts and read-only views of them (types.MappingProxyType)
        return obj.get(key, default)
    return getattr(obj, key, default)


def _check_prediction(prediction):
    """A dict or an object (nclab.theory Prediction) with at least one of the predicted quantities."""
    if prediction is None or isinstance(prediction, (str, bytes, int, float, list, tuple, np.ndarray, torch.Tensor)):
        raise TypeError(f"prediction must be an nclab.theory Prediction or a dict with its keys {KEYS}, "
                        f"got {type(prediction).__name__}")
    if not any(_get(prediction, k) is not None for k in ("WWt", "HtH", "WH", "layers")):
        raise ValueError(f"prediction has none of WWt, HtH, WH, layers (a {type(prediction).__name__})")
    layers = _get(prediction, "layers")
    if layers is not None:
        if not isinstance(layers, (list, tuple)) or not all(isinstance(x, dict) or hasattr(x, "get")
                                                             for x in layers):
            raise TypeError("prediction.layers must be a list of dicts (mean_gram, partial_gram, nc3_scale)")


def gram_error(measured, predicted) -> dict:
    """{"rel": ||A - B||_F / ||B||_F (scale included), "shape": || A/||A|| - B/||B|| ||_F}."""
    a, b = np.asarray(measured, dtype=np.float64), check_matrix(predicted, "predicted Gram")
    if a.shape != b.shape:
        raise ValueError(f"measured shape {a.shape} != predicted shape {b.shape}")
    nb = np.linalg.norm(b)
    return {"rel": float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan"),
            "shape": normalized_distance(a, b)}


def norm_error(measured_gram, predicted_gram) -> dict:
    """Per-class norms sqrt(diag) measured vs predicted: max_k |a_k - b_k| / max_k b_k, and both lists."""
    a = np.sqrt(np.clip(np.diag(measured_gram), 0, None))
    b = np.sqrt(np.clip(np.diag(np.asarray(predicted_gram, dtype=np.float64)), 0, None))
    return {"max_rel": float(np.abs(a - b).max() / b.max()) if b.max() > 0 else float("nan"),
            "measured": a.tolist(), "predicted": b.tolist()}


def compare_to_theory(prediction, features, labels, weights, bias=None, *, num_classes: int | None = None,
                      center: bool | None = None) -> dict:
    """Distances of measured Grams, per-class norms and bias to a prediction.

    Parameters
    ----------
    prediction : nclab.theory Prediction or a dict with the same keys (plain arrays).
    features : (N, d_1) head input, rows are samples. labels : (N,).
    weights : (K, d_1) classifier or list [W_1..W_M], W_j (d_{j+1}, d_j). bias : (K,) or None.
    center : centre the means; default None = the problem's bias setting (prediction.problem.bias,
        else whether prediction.bias is set).

    Returns {"WWt", "HtH", "WH": {"rel", "shape"}, "w_norms", "h_norms": {"max_rel", ...}, "bias": rel,
    "layers": [{"mean_gram", "partial_gram", "nc3", "h_norms", "w_norms"}]} for whatever is predicted.
    """
    _check_prediction(prediction)
    if center is not None and not isinstance(center, (bool, np.bool_)):
        raise TypeError(f"center must be True, False or None, got {center!r}")
    x = check_features(features)
    y, K = check_labels(labels, x.shape[0], num_classes, x.device)
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    parts = [p.cpu().numpy() for p in partial_products(weights)]
    if parts[0].shape != (K, x.shape[1]):
        raise ValueError(f"end-to-end classifier has shape {parts[0].shape}, expected ({K}, {x.shape[1]})")
    stats = ClassStats(K, moments="none").update(x, y)
    n = stats.counts.cpu().numpy()
    if (n == 0).any():
        raise ValueError(f"classes {np.flatnonzero(n == 0).tolist()} have no samples; theory needs all K")
    if center is None:
        problem = _get(prediction, "problem")
        center = bool(_get(problem, "bias", _get(prediction, "bias") is not None))
    m = stats.means.cpu().numpy()  # (K, d_1)
    if center:
        m = m - global_mean(m, n)
    out, w = {}, parts[0]
    measured = {"WWt": w @ w.T, "HtH": m @ m.T, "WH": w @ m.T}
    for key, val in measured.items():
        if _get(prediction, key) is not None:
            out[key] = gram_error(val, _get(prediction, key))
    if _get(prediction, "WWt") is not None:
        out["w_norms"] = norm_error(measured["WWt"], _get(prediction, "WWt"))
    if _get(prediction, "HtH") is not None:
        out["h_norms"] = norm_error(measured["HtH"], _get(prediction, "HtH"))
    pb = _get(prediction, "bias")
    if pb is not None and bias is not None:
        pb = check_vector(pb, "prediction bias", K)
        b = check_vector(bias, "bias", K)
        out["bias"] = float(np.linalg.norm(b - pb) / max(np.linalg.norm(pb), 1e-300))
    layers = _get(prediction, "layers")
    if layers:
        if len(layers) != len(parts):
            raise ValueError(f"prediction has {len(layers)} layers, weights give {len(parts)}")
        out["layers"] = []
        mj = m
        for j, (lay, p) in enumerate(zip(layers, parts)):
            if j > 0:
                mj = mj @ check_matrix(weights[j - 1], f"W_{j}").T
            row = {}
            if _get(lay, "mean_gram") is not None:
                row["mean_gram"] = gram_error(mj @ mj.T, _get(lay, "mean_gram"))
                row["h_norms"] = norm_error(mj @ mj.T, _get(lay, "mean_gram"))
            if _get(lay, "partial_gram") is not None:
                row["partial_gram"] = gram_error(p @ p.T, _get(lay, "partial_gram"))
                row["w_norms"] = norm_error(p @ p.T, _get(lay, "partial_gram"))
            if _get(lay, "nc3_scale") is not None:
                c = check_matrix(_get(lay, "nc3_scale"), "nc3_scale", cols=K)
                row["nc3"] = normalized_distance(p, c @ mj)
            out["layers"].append(row)
    return out
