"""The metric columns of a run's ``metrics.csv``: one naming scheme for every run kind.

``nclab simulate`` (kind ``ufm-simulation``, nclab.ufm.snapshot) and ``nclab train`` (kind ``train``,
nclab.experiments.tracking) write the same names with the same meaning, and every table and figure of
``nclab runs`` / ``nclab report`` reads these names. M is the depth (linear layers, classifier included),
K the number of classes; layer j = 1..M is the layer whose INPUT features are H_j = W_{j-1}..W_1 H
(H_1 = H: the UFM's free features, a network's head input h); P_j = W_M..W_j is the partial product
(P_1 = W = W_M..W_1, the end-to-end classifier); Hbar_j holds the class means of H_j (K rows), centred by the
sample-weighted global mean exactly when the problem has a bias, uncentred otherwise. "Target" is the
predicted geometry (nclab.predict's minimizer: ETF, OF or GOF with its norms; or the named ETF/OF frame
when a train run has no theory target); ``||.||`` is the Frobenius norm, ``unit(A) = A/||A||``.

=================  ================================================================  ======  =====
column             definition                                                        ufm     train
=================  ================================================================  ======  =====
step / epoch       x axis (train rows have both; the report uses epoch)              step    both
objective          the run's exact objective f (train: eval mode, after the epoch)   yes     yes
rel_gap            (f - f*)/|f*|, f* the predicted minimum (train: theory target)    yes     yes
nc1_L{j}           tr(Sigma_W Sigma_B^+)/K of H_j; NaN where undefined (Sigma_B = 0,  yes     yes
                   e.g. the zero solution). nc1_L1 is NC1 of H (no plain "nc1")
nc2_w_L{j}         || unit(P_j P_j^T) - unit(target P_j P_j^T) ||                    yes     yes
nc2_h_L{j}         || unit(Hbar_j Hbar_j^T) - unit(target Hbar_j Hbar_j^T) ||        yes     yes
nc3_L{j}           || unit(P_j) - unit(C_j Hbar_j) ||, C_j the target's scale        yes     yes
                   (P_j = C_j Hbar_j at the minimizer; self-duality per layer)
nc2_w              end-to-end NC2 of the classifier: equal to nc2_w_L1               yes     yes
nc2_h              NC2 of the class means of H: equal to nc2_h_L1                   yes     yes
nc3                || unit(W Hbar_1^T) - unit(target W Hbar^T) || (K x K; differs     yes     yes
                   from nc3_L1, which compares the K x d_1 matrices themselves)
w_norm_{k}         ||w_k||, row k of W = W_M..W_1 (k = 0..K-1)                       yes     yes
h_norm_{k}         ||hbar_k||, class mean k of H (centred as above)                  yes     yes
w_norm_err         max_k | ||w_k|| - ||w_k*|| | / max_k ||w_k*|| (h_norm_err alike)  yes     theory
err_WWt, ...       relative Frobenius error of W W^T, Hbar^T Hbar, W Hbar (scale      yes     -
                   included)
balance_H,         balancedness of the UFM factors (theory.md 1.1-1.2)              yes     -
balance_L{j}
bias_err           ||b - b*|| / ||b*|| (MSE with bias)                               yes     -
loss               data term of the objective                                        yes     -
train_loss         (1/N) sum_i ell_i during the epoch (train mode)                   -       yes
train_acc,         accuracy on the training split (eval mode) and on the test split   -       yes
test_acc,          (test_* empty without a test split)
test_loss, lr
=================  ================================================================  ======  =====

Where the predicted Grams are not unique (bottleneck ties: only their spectra are), the UFM's NC2/NC3
columns compare sorted eigenvalues; the trainer then falls back to the named frame.

Old run folders (nclab before this scheme) lack some columns: train runs wrote only the per-layer
``nc2_w_L{j}``/``nc2_h_L{j}``, UFM runs only ``nc2_w``/``nc2_h`` and no per-layer NC2, and both wrote NC1 = 0
at the zero solution. :func:`with_aliases` fills the equal columns when a row has one and not the other;
columns that cannot be derived stay missing (figures leave them out, tables show "-").

A train run also stores ``grams.json`` (written by the tracker at the end): the learned K x K Grams of the
last metrics row, end to end (``WWt``, ``HtH``, ``WH``) and per layer, for the report's heatmaps.
"""

from __future__ import annotations

import math

END_TO_END = ("nc2_w", "nc2_h", "nc3")
PER_LAYER = ("nc1", "nc2_w", "nc2_h", "nc3")  # base names of the nc*_L{j} columns, in the report's order
ALIASES = {"nc2_w": "nc2_w_L1", "nc2_h": "nc2_h_L1"}  # equal by definition (see the table)
GRAMS = "grams.json"


def layer_column(base: str, j: int) -> str:
    """``layer_column("nc2_w", 3) == "nc2_w_L3"``."""
    return f"{base}_L{j}"


def _zero_features(row: dict, keys=None) -> bool:
    """Every class mean norm recorded and exactly 0 (old runs at the zero solution)."""
    if keys is None:
        keys = [k for k in row if k.startswith("h_norm_") and k[7:].isdigit()]
    norms = [row.get(k) for k in keys]
    return bool(norms) and all(isinstance(v, (int, float)) and v == 0 for v in norms)


def with_aliases(row: dict, h_norm_keys=None) -> dict:
    """The row with the equal end-to-end/layer-1 columns filled from each other where one is missing (in
    place, returned), and NC1 set to NaN (undefined) where every class mean is exactly zero.
    ``h_norm_keys``: the row's h_norm_{k} columns when the caller knows them (a table: found once)."""
    for plain, layered in ALIASES.items():
        if row.get(plain) is None and row.get(layered) is not None:
            row[plain] = row[layered]
        elif row.get(layered) is None and row.get(plain) is not None:
            row[layered] = row[plain]
    if _zero_features(row, h_norm_keys):
        for k, v in row.items():
            if k.startswith("nc1_L") and v == 0:
                row[k] = math.nan
    return row
