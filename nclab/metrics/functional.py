"""NC formulas on class-level objects: class means (K, D), classifier rows (K, D), Grams (K, K).

Pure float64 numpy functions; nothing here touches per-sample data (see stats.py for that).
Conventions: class means and classifier rows are matrices with one row per class; a normalized
Gram is G / ||G||_F; the simplex ETF Gram is (I - 11^T/K)/sqrt(K-1), the orthogonal frame (OF) I/sqrt(K).

Scale: every NC metric is scale-invariant, so each function first rescales its inputs by a power of two
(exact) to a largest entry in [0.5, 1): any finite input, 1e-300 or 1e300, gives the right finite answer
(no squares that overflow or underflow).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from nclab.metrics._checks import (
    check_choice,
    check_fraction,
    check_int,
    check_matrix,
    check_num_classes,
    check_rtol,
    check_vector,
)

DEFAULT_RTOL = 1e-6  # singular values of the centred means below rtol * largest count as zero
DEFAULT_COLLAPSE_RTOL = 1e-3
GLOBAL_MEANS = ("weighted", "uniform")


def exp2(a) -> int:
    """k with max|a| * 2^-k in [0.5, 1) (0 for an empty or all-zero array)."""
    a = np.asarray(a)
    if a.size == 0:
        return 0
    m = float(np.max(np.abs(a)))
    return int(np.frexp(m)[1]) if m > 0 and np.isfinite(m) else 0


def unit(a) -> np.ndarray:
    """a * 2^-k with the largest |entry| in [0.5, 1): exact, keeps every scale-invariant quantity."""
    a = np.asarray(a, dtype=np.float64)
    k = exp2(a)
    return np.ldexp(a, -k) if k else a


def global_mean(means: np.ndarray, counts: np.ndarray | None = None, mode: str = "weighted") -> np.ndarray:
    """Global mean mu_G (D,) of class means (K, D).

    mode="weighted" (default, the paper's): mu_G = sum_k n_k mu_k / N, the mean of all samples.
    mode="uniform": mu_G = (1/K) sum_k mu_k, the mean of the class means. Equal when balanced.
    """
    check_choice(mode, "global_mean", GLOBAL_MEANS)
    means = np.asarray(means, dtype=np.float64)
    if mode == "uniform" or counts is None:
        return means.mean(axis=0)
    counts = check_vector(counts, "counts", means.shape[0])
    total = counts.sum()
    if (counts < 0).any() or not total > 0:
        raise ValueError("counts must be non-negative with a positive sum")
    return (counts / total) @ means


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
            return _named_gram(t, check_num_classes(K, "K"))
        else:
            raise ValueError(f"target must be 'etf', 'of' or a K x K Gram (e.g. the GOF from nclab.theory), "
                             f"got {target!r}")
    else:
        g = check_matrix(target, "target Gram")
        if classes is not None and len(classes) and g.shape[0] == g.shape[1] > max(classes) and g.shape[0] != K:
            g = g[np.ix_(classes, classes)]
        if g.shape != (K, K):
            raise ValueError(f"target Gram must be {K} x {K}, got shape {g.shape}")
    g = unit(g)
    norm = np.linalg.norm(g)
    if norm == 0:
        raise ValueError("target Gram is zero")
    return g / norm


def named_target(target, weights, bias) -> object:
    """Resolve "auto": "etf" with a bias or without a classifier, else "of" (bias-free: the orthogonal frame,
    the theory's geometry when balanced; pass the theory's Gram (nclab.predict) for imbalanced data)."""
    if isinstance(target, str) and target.lower() == "auto":
        return "etf" if (bias is not None or weights is None) else "of"
    return target


def default_center(target) -> bool:
    """ETF targets compare centred class means; OF, GOF and explicit Grams compare uncentred ones."""
    return isinstance(target, str) and target.lower() == "etf"


def normalized_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|| a/||a||_F - b/||b||_F ||_F; NaN if either is zero."""
    a, b = unit(a), unit(b)
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
    a = unit(check_matrix(vectors, "vectors", min_rows=2))
    if center is None:
        center = default_center(target)
    if not isinstance(center, (bool, np.bool_)):
        raise TypeError(f"center must be True, False or None, got {center!r}")
    if center:
        a = unit(a - global_mean(a, counts))
    return normalized_distance(a @ a.T, target_gram(target, a.shape[0]))


def equinorm(vectors) -> float:
    """NC2 equinorm: coefficient of variation std_k ||v_k|| / mean_k ||v_k|| (population std); 0 = equal
    norms. Pass centred means (mu_k - mu_G) or classifier rows w_k. NaN if all norms are zero."""
    return _equinorm(check_matrix(vectors, "vectors", min_rows=2))


def _equinorm(a: np.ndarray) -> float:
    a = unit(a)
    norms = np.sqrt((a * a).sum(1))
    m = norms.mean()
    return float(norms.std() / m) if m > 0 else float("nan")


def _cosines(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = unit(a)
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
    a = check_matrix(vectors, "vectors", min_rows=2)
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
    mu = check_matrix(means, "means", min_rows=2)
    var = check_vector(variances, "variances", mu.shape[0])
    if (var < 0).any():
        raise ValueError("variances must be non-negative")
    k = exp2(mu)  # same power of two for the means and (squared) for the variances: exact, invariant
    with np.errstate(over="ignore", under="ignore"):
        return _cdnv(np.ldexp(mu, -k), np.ldexp(var, -2 * k))


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
    w, h = check_matrix(weights, "weights", min_rows=2), check_matrix(means, "means", min_rows=2)
    if w.shape != h.shape:
        raise ValueError(f"weights {w.shape} and means {h.shape} must have the same shape (K, D)")
    return normalized_distance(unit(w) @ unit(h).T, target_gram(target, w.shape[0]))


def nc3_dual(weights, means, scale=None) -> float:
    """NC3 (self-duality): || W/||W||_F - C Hbar^T/||C Hbar^T||_F ||_F with Hbar^T = means (K, D) and
    C (K, K) the theory's scaling, default identity (ETF/OF; diag(s_k + N lambda_H) for the GOF)."""
    w, h = check_matrix(weights, "weights"), check_matrix(means, "means")
    if w.shape != h.shape:
        raise ValueError(f"weights {w.shape} and means {h.shape} must have the same shape (K, D)")
    h = unit(h)
    if scale is not None:
        h = unit(check_matrix(scale, "nc3 scale", cols=h.shape[0])) @ h
    return normalized_distance(w, h)


def bias_collapse(weights, bias, mean, counts) -> float:
    """Bias collapse: || W mu_G + b - pi ||_2 / ||pi||_2 with pi_k = n_k / N (1/K when balanced).

    At the MSE optimum with a bias the network's output at the global mean mu_G (sample-weighted)
    equals the class frequencies; 0 = collapsed.
    """
    w = check_matrix(weights, "weights")
    K, D = w.shape
    return _bias_collapse(w, check_vector(bias, "bias", K), check_vector(mean, "mean", D), 0,
                          check_vector(counts, "counts", K))


def _bias_collapse(w: np.ndarray, b: np.ndarray, mean: np.ndarray, e: int, counts: np.ndarray) -> float:
    """|| 2^e W mean + b - pi || / ||pi|| without overflow in the products (inf only if the true value is)."""
    if (counts < 0).any() or not counts.sum() > 0:
        raise ValueError("counts must be non-negative with a positive sum")
    pi = counts / counts.sum()
    kw, km = exp2(w), exp2(mean)
    z = np.ldexp(w, -kw) @ np.ldexp(mean, -km)  # W mean / 2^(kw + km), entries < D
    ez = e + kw + km + exp2(z)
    rest = b - pi
    big = max(ez, exp2(rest), exp2(pi))
    with np.errstate(over="ignore", under="ignore"):
        v = np.ldexp(z, e + kw + km - big) + np.ldexp(rest, -big)  # (W mean 2^e + b - pi) / 2^big
        return float(np.ldexp(_fro(v) / _fro(pi), big))  # ||pi|| >= 1/sqrt(K): no underflow


def collapsed_classes(means, weights=None, rtol: float = DEFAULT_COLLAPSE_RTOL) -> np.ndarray:
    """Boolean mask (K,): class k collapsed when ||mu_k|| <= rtol * max_l ||mu_l|| and (if the classifier
    W is given) ||w_k|| <= rtol * max_l ||w_l|| (minority collapse). Pass the means centred or not, as the
    target needs. Default rtol=1e-3."""
    rtol = check_fraction(rtol, "rtol")
    m = check_matrix(means, "means")
    return _collapsed(m, None if weights is None else check_matrix(weights, "W", rows=m.shape[0]), rtol)


def _collapsed(means: np.ndarray, weights: np.ndarray | None, rtol: float) -> np.ndarray:
    means = unit(means)
    mn = np.sqrt((means * means).sum(1))
    out = mn <= rtol * mn.max()
    if weights is not None:
        weights = unit(weights)
        wn = np.sqrt((weights * weights).sum(1))
        out &= wn <= rtol * wn.max()
    return out


def nc1_projector(means, counts, *, rtol: float = DEFAULT_RTOL, mode: str = "weighted"):
    """K-space factor of Sigma_B^+ for NC1.

    With the centred means M~ = means - mu_G (K, D) = U S V^T (thin SVD), Sigma_B = M~^T M~ / K and
    Sigma_B^+ = K V S^-2 V^T, so NC1 = tr(Sigma_W Sigma_B^+)/K = tr(P^T Sigma_W P) with P = V_r S_r^-1,
    keeping the r singular values s > rtol * s_max (rtol default 1e-6, i.e. eigenvalues of Sigma_B above
    1e-12 of the largest; float64 epsilon <= rtol < 1), and never more than K - 1 (the centred means sum
    to zero with the global mean's weights: a K-th singular value is round-off, never inverted).

    Returns P (D, r), singular values s (all), rank r, mu_G (D,).
    """
    rtol = check_rtol(rtol)
    m = check_matrix(means, "means", min_rows=2)
    k = exp2(m)
    m = np.ldexp(m, -k)  # exact power-of-two rescaling: the SVD never over/underflows
    mu_g = global_mean(m, counts, mode)
    if m.shape[0] > m.shape[1]:  # K > D: the SVD of R (D x D) from a QR, no K x D left factor
        import torch  # torch's QR follows torch's thread setting (numpy's BLAS may oversubscribe the cores)

        r_ = torch.linalg.qr(torch.from_numpy(m - mu_g), mode="r")[1].numpy()
        _, s, vt = np.linalg.svd(r_, full_matrices=False)
    else:
        _, s, vt = np.linalg.svd(m - mu_g, full_matrices=False)
    r = min(int((s > rtol * s[0]).sum()), m.shape[0] - 1) if s.size and s[0] > 0 else 0
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(vt[:r].T / s[:r], -k), np.ldexp(s, k), r, np.ldexp(mu_g, k)


def nc1_from_scatter(scatter_sum, projector, n: int) -> float:
    """NC1 = tr(P^T S P) / N with S = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (D, D), P from
    nc1_projector; clipped at 0 (round-off can make tiny values negative). P with 0 columns gives 0."""
    n = check_int(n, "n", 1)
    s = check_matrix(scatter_sum, "scatter_sum")
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"scatter_sum must be square (D, D), got shape {s.shape}")
    p = np.asarray(projector, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != s.shape[0]:
        raise ValueError(f"projector must have shape ({s.shape[0]}, r), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("projector contains NaN or inf")
    if p.shape[1] == 0:
        return 0.0
    ks, kp = exp2(s), exp2(p)
    ps = np.ldexp(p, -kp)
    t = float(np.einsum("ij,ij->", ps, np.ldexp(s, -ks) @ ps))
    with np.errstate(over="ignore", under="ignore"):
        return max(float(np.ldexp(t / n, ks + 2 * kp)), 0.0)
