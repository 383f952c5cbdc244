"""NC formulas on class-level objects: class means (K, D), classifier rows (K, D), Grams (K, K).

Pure float64 numpy functions; nothing here touches per-sample data (see stats.py for that).
Conventions: class means and classifier rows are matrices with one row per class; a normalized
Gram is G / ||G||_F; the simplex ETF Gram is (I - 11^T/K)/sqrt(K-1), the orthogonal frame (OF) I/sqrt(K).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from nclab.metrics._checks import check_matrix

DEFAULT_RTOL = 1e-6  # singular values of the centred means below rtol * largest count as zero
DEFAULT_COLLAPSE_RTOL = 1e-3


def global_mean(means: np.ndarray, counts: np.ndarray | None = None, mode: str = "weighted") -> np.ndarray:
    """Global mean mu_G (D,) of class means (K, D).

    mode="weighted" (default, the paper's): mu_G = sum_k n_k mu_k / N, the mean of all samples.
    mode="uniform": mu_G = (1/K) sum_k mu_k, the mean of the class means. Equal when balanced.
    """
    if mode == "uniform" or counts is None:
        return means.mean(axis=0)
    if mode != "weighted":
        raise ValueError(f"global_mean must be 'weighted' or 'uniform', got {mode!r}")
    counts = np.asarray(counts, dtype=np.float64)
    return counts @ means / counts.sum()


@lru_cache(maxsize=64)
def _pairs(K: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(K, 1)


def _fro(a: np.ndarray) -> float:
    a = a.ravel()
    return float(np.sqrt(a @ a))


@lru_cache(maxsize=64)
def _named_gram(name: str, K: int) -> np.ndarray:
    g = np.eye(K) - 1.0 / K if name == "etf" else np.eye(K)
    g = g / np.linalg.norm(g)
    g.setflags(write=False)
    return g


def target_gram(target, K: int, classes=None) -> np.ndarray:
    """Normalized (unit Frobenius norm) K x K target Gram.

    target: "etf" -> (I - 11^T/K)/sqrt(K-1); "of" -> I/sqrt(K); or an explicit (K, K) Gram (e.g. the
    GOF Gram from nclab.theory), normalized here. `classes` selects rows/columns of an explicit Gram
    whose size is the full label range (classes that were dropped because they had no samples).
    """
    if isinstance(target, str):
        t = target.lower()
        if t in ("etf", "of"):
            return _named_gram(t, K)
        else:
            raise ValueError(f"target must be 'etf', 'of' or a K x K Gram (e.g. the GOF from nclab.theory), "
                             f"got {target!r}")
    else:
        g = check_matrix(target, "target Gram")
        if classes is not None and g.shape[0] == g.shape[1] > max(classes) and g.shape[0] != K:
            g = g[np.ix_(classes, classes)]
        if g.shape != (K, K):
            raise ValueError(f"target Gram must be {K} x {K}, got shape {g.shape}")
    norm = np.linalg.norm(g)
    if norm == 0:
        raise ValueError("target Gram is zero")
    return g / norm


def default_center(target) -> bool:
    """ETF targets compare centred class means; OF, GOF and explicit Grams compare uncentred ones."""
    return isinstance(target, str) and target.lower() == "etf"


def normalized_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|| a/||a||_F - b/||b||_F ||_F; NaN if either is zero."""
    na, nb = _fro(a), _fro(b)
    if na == 0 or nb == 0:
        return float("nan")
    return _fro(a / na - b / nb)


def gram_distance(vectors, target="etf", *, center=None, counts=None) -> float:
    """NC2: || A A^T/||A A^T||_F - G/||G||_F ||_F for class vectors A (K, D) and a target Gram G.

    Parameters
    ----------
    vectors : array of shape (K, D), class means or classifier rows (any partial product W_M..W_j).
    target : "etf", "of" or an explicit (K, K) Gram, default "etf".
    center : bool or None, default None = centre (subtract the global mean) only for "etf", the
        centring each target needs. Pass center=False for classifier rows.
    counts : array of shape (K,) or None; with centring, the global mean is sum_k n_k v_k / N
        (sample-weighted, default) or the plain mean of the rows when None.
    """
    a = check_matrix(vectors, "vectors")
    if center is None:
        center = default_center(target)
    if center:
        a = a - global_mean(a, counts)
    return normalized_distance(a @ a.T, target_gram(target, a.shape[0]))


def equinorm(vectors) -> float:
    """NC2 equinorm: coefficient of variation std_k ||v_k|| / mean_k ||v_k|| (population std); 0 = equal
    norms. Pass centred means (mu_k - mu_G) or classifier rows w_k. NaN if all norms are zero."""
    return _equinorm(check_matrix(vectors, "vectors"))


def _equinorm(a: np.ndarray) -> float:
    norms = np.sqrt((a * a).sum(1))
    m = norms.mean()
    return float(norms.std() / m) if m > 0 else float("nan")


def _cosines(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.sqrt((a * a).sum(1))
    ok = norms > 0
    safe = np.where(ok, norms, 1.0)
    return (a @ a.T) / np.outer(safe, safe), ok


def equiangularity(vectors, target="etf") -> float:
    """NC2 equiangularity: mean over pairs k < l of |cos(v_k, v_l) - cos*_kl|.

    cos*_kl is the target's cosine: -1/(K-1) for "etf" (pass centred means), 0 for "of", and
    G_kl / sqrt(G_kk G_ll) for an explicit Gram. Pairs with a zero vector (or zero target diagonal,
    collapsed classes) are skipped; NaN if no pair is left.
    """
    a = check_matrix(vectors, "vectors")
    return _equiangularity(a, target_gram(target, a.shape[0]))


def _equiangularity(a: np.ndarray, g: np.ndarray) -> float:
    cos, ok = _cosines(a)
    ref, ok_t = _cosines_from_gram(g)
    iu = _pairs(a.shape[0])
    keep = (ok[:, None] & ok[None, :] & ok_t[:, None] & ok_t[None, :])[iu]
    if not keep.any():
        return float("nan")
    return float(np.abs(cos[iu] - ref[iu])[keep].mean())


def _cosines_from_gram(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(np.clip(np.diag(g), 0, None))
    ok = d > 0
    safe = np.where(ok, d, 1.0)
    return g / np.outer(safe, safe), ok


def cdnv(means, variances) -> tuple[float, np.ndarray]:
    """Class-distance normalized variance (Galanti et al. 2022), the mean over pairs k < l of
    (var_k + var_l) / (2 ||mu_k - mu_l||^2), var_k = (1/n_k) sum_{i in k} ||h_i - mu_k||^2.

    The denominator is 2 ||mu_k - mu_l||^2 (squared distance of the means, times 2). Returns the mean
    and the (K, K) matrix (diagonal 0). A pair at distance 0 gives inf (NaN if its variances are 0 too).
    """
    return _cdnv(check_matrix(means, "means"), np.asarray(variances, dtype=np.float64))


def _cdnv(mu: np.ndarray, var: np.ndarray) -> tuple[float, np.ndarray]:
    mu = mu - mu.mean(0)  # centring first keeps ||a||^2 + ||b||^2 - 2ab accurate
    sq = (mu * mu).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * mu @ mu.T, 0, None)
    iu = _pairs(mu.shape[0])
    num = var[:, None] + var[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        mat = num / (2 * d2)
    mat[d2 == 0] = np.where(num[d2 == 0] > 0, np.inf, np.nan)
    mat = np.triu(mat, 1)
    mat = mat + mat.T
    return float(mat[iu].mean()), mat


def nc3(weights, means, target="etf") -> float:
    """NC3 (duality with the target): || W Hbar/||W Hbar||_F - G/||G||_F ||_F, W (K, D) classifier
    (or partial product), Hbar = means^T with means (K, D) already centred for "etf" (uncentred for
    OF/GOF), G the target ("etf", "of" or an explicit (K, K) matrix such as the theory's W H)."""
    w, h = check_matrix(weights, "weights"), check_matrix(means, "means")
    return normalized_distance(w @ h.T, target_gram(target, w.shape[0]))


def nc3_dual(weights, means, scale=None) -> float:
    """NC3 (self-duality): || W/||W||_F - C Hbar^T/||C Hbar^T||_F ||_F with Hbar^T = means (K, D) and
    C (K, K) the theory's scaling, default identity (ETF/OF; diag(s_k + N lambda_H) for the GOF)."""
    w, h = check_matrix(weights, "weights"), check_matrix(means, "means")
    if scale is not None:
        h = check_matrix(scale, "nc3 scale", cols=h.shape[0]) @ h
    return normalized_distance(w, h)


def bias_collapse(weights, bias, mean, counts) -> float:
    """Bias collapse: || W mu_G + b - pi ||_2 / ||pi||_2 with pi_k = n_k / N (1/K when balanced).

    At the MSE optimum with a bias the network's output at the global mean mu_G (sample-weighted)
    equals the class frequencies; 0 = collapsed.
    """
    pi = np.asarray(counts, dtype=np.float64)
    pi = pi / pi.sum()
    return _fro(np.asarray(weights) @ mean + np.asarray(bias) - pi) / _fro(pi)


def collapsed_classes(means, weights=None, rtol: float = DEFAULT_COLLAPSE_RTOL) -> np.ndarray:
    """Boolean mask (K,): class k collapsed when ||mu_k|| <= rtol * max_l ||mu_l|| and (if the classifier
    W is given) ||w_k|| <= rtol * max_l ||w_l|| (minority collapse). Pass the means centred or not, as the
    target needs. Default rtol=1e-3."""
    return _collapsed(check_matrix(means, "means"), None if weights is None else check_matrix(weights, "W"),
                      rtol)


def _collapsed(means: np.ndarray, weights: np.ndarray | None, rtol: float) -> np.ndarray:
    mn = np.sqrt((means * means).sum(1))
    out = mn <= rtol * mn.max()
    if weights is not None:
        wn = np.sqrt((weights * weights).sum(1))
        out &= wn <= rtol * wn.max()
    return out


def nc1_projector(means, counts, *, rtol: float = DEFAULT_RTOL, mode: str = "weighted"):
    """K-space factor of Sigma_B^+ for NC1.

    With the centred means M~ = means - mu_G (K, D) = U S V^T (thin SVD), Sigma_B = M~^T M~ / K and
    Sigma_B^+ = K V S^-2 V^T, so NC1 = tr(Sigma_W Sigma_B^+)/K = tr(P^T Sigma_W P) with P = V_r S_r^-1,
    keeping the r singular values s > rtol * s_max (rtol default 1e-6, i.e. eigenvalues of Sigma_B above
    1e-12 of the largest).

    Returns P (D, r), singular values s (all), rank r, mu_G (D,).
    """
    mu_g = global_mean(means, counts, mode)
    _, s, vt = np.linalg.svd(means - mu_g, full_matrices=False)
    r = int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    return vt[:r].T / s[:r], s, r, mu_g


def nc1_from_scatter(scatter_sum, projector, n: int) -> float:
    """NC1 = tr(P^T S P) / N with S = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (D, D), P from
    nc1_projector; clipped at 0 (round-off can make tiny values negative)."""
    p = np.asarray(projector)
    return max(float(np.einsum("ij,ij->", p, np.asarray(scatter_sum) @ p)) / n, 0.0)
