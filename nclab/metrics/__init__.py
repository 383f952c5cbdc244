"""NC metrics engine (leaf package: torch/numpy only).

Features are rows: `features` (N, D) with integer `labels` (N,); classifier W (K, D); deep head
[W_1..W_M] with W_j (d_{j+1}, d_j). Statistics and metrics are float64.

One call:       nc_metrics(H, y, W, b, target="etf") -> NCMetrics;  deep_head_metrics(H, y, [W1..WM], b)
Streaming:      ClassStats(K).update(x, y)... .merge(other) / .all_reduce() -> .compute(W, b)
Any model:      capture_inputs(model, names) (hooks), model_head_metrics(model, loader, names, K)
Against theory: compare_to_theory(prediction, H, y, weights, bias)

Every metric, its formula, global mean, centring, target and pass: docs/metrics.md (one formula per name).
Pairwise metrics are computed tile by tile (pairwise.py): memory O(K D + D^2 + tile^2), no K x K object.
"""

from nclab.metrics.compare import compare_to_theory
from nclab.metrics.functional import (
    bias_collapse,
    cdnv,
    collapsed_classes,
    equiangularity,
    equinorm,
    gram_distance,
    nc1_from_scatter,
    nc1_projector,
    nc3,
    nc3_dual,
    target_gram,
)
from nclab.metrics.hooks import capture_inputs, linear_head, model_head_metrics, stats_head_metrics
from nclab.metrics.io import load_dump
from nclab.metrics.report import (
    DeepHeadMetrics,
    NCMetrics,
    compute_metrics,
    deep_head_metrics,
    nc1,
    nc_metrics,
    partial_products,
)
from nclab.metrics.stats import ClassStats, SecondPass

__all__ = [
    "ClassStats", "SecondPass", "NCMetrics", "DeepHeadMetrics", "compute_metrics", "nc_metrics", "nc1",
    "deep_head_metrics", "partial_products", "compare_to_theory", "capture_inputs", "linear_head",
    "model_head_metrics", "stats_head_metrics", "load_dump", "bias_collapse", "cdnv", "collapsed_classes",
    "equiangularity", "equinorm", "gram_distance", "nc1_from_scatter", "nc1_projector", "nc3", "nc3_dual",
    "target_gram",
]
