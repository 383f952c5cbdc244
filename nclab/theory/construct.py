"""Explicit matrices W_1..W_M, H, b that attain a prediction's objective, for the problem's widths.

Layer j maps R^{d_j} -> R^{d_{j+1}}; the active modes use the first r coordinates of every hidden
space and the eigenvectors U_a of the target Gram at the output, so W_j = Q_{j+1} diag(sigma_j) Q_j^T
with balanced singular values (theory.md sec. 1.1). Features solve the ridge problem in closed form:
h_k = Q_1 diag(sqrt(s)/(s+c)) U_a^T (e_k - b). All samples of class k share h_k (NC1).
"""

from __future__ import annotations

import numpy as np

from nclab.theory.objective import labels_from_counts


def construct_minimizer(prediction):
    """Return ``(weights, H, b)``: W_j (d_{j+1}, d_j) float64, H (d, N) with columns grouped by class
    (labels ``labels_from_counts(counts)``), b (K,) or None. See :meth:`Prediction.construct`."""
    from nclab.theory.ce import _check_construct_memory
    from nclab.theory.predict import Prediction

    if not isinstance(prediction, Prediction):
        raise TypeError(f"prediction must be an nclab.theory.Prediction, got {type(prediction).__name__}")
    p = prediction.problem
    _check_construct_memory(p)
    if p.loss == "ce" and not p.balanced:
        from nclab.theory.ce_imbalanced import construct_ce_imbalanced, construct_ce_imbalanced_deep

        if p.M >= 2:  # the best-found point of the rank search, balanced factors (W_j = a_j diag(t))
            return construct_ce_imbalanced_deep(p, {"Z": prediction._ce.Z, "bias": prediction._ce.bias})
        return construct_ce_imbalanced(p, prediction._ce)
    if p.loss == "ce":
        from nclab.theory.ce import construct_ce

        return construct_ce(p, prediction._ce)
    st = prediction._struct
    K, M = p.K, p.M
    Q, mode = st.basis.vectors("u", centred=False)  # (K, r) active eigenvectors of T, one column per mode
    QE = st.basis.vectors("u", centred=True)[0] if p.bias else Q  # E^T U_a (E = I - ybar 1^T)
    r = Q.shape[1]
    s, sigma = st.s[mode], st.sigma[:, mode]
    dims = list(p.widths) + [K]
    weights = []
    for j in range(M):
        W = np.zeros((dims[j + 1], dims[j]))
        if j == M - 1:
            W[:, :r] = Q * sigma[j][None, :]
        else:
            W[np.arange(r), np.arange(r)] = sigma[j]
        weights.append(W)
    b = None if prediction.bias is None else prediction.bias.copy()
    Hbar = np.zeros((dims[0], K))  # d x K class means
    Hbar[:r, :] = (np.sqrt(s) / (s + st.c))[:, None] * QE.T
    H = Hbar[:, labels_from_counts(p.counts)]
    return weights, H, b
