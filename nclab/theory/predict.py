"""``nclab.predict``: the global minimizer of the deep linear UFM for one setting, as one object."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from nclab.theory.mse import MSESolution, geometry_name, solve_mse, thresholds
from nclab.theory.problem import Problem, make_problem


class MSEStructure:
    """K x K Grams of the MSE minimizer, built on demand from the per-mode spectrum.

    Every Gram has the form L^T diag(v) R with L, R in {U_a^T, U_a^T E} (U_a: active eigenvectors
    of T, E = I bias-free or I - ybar 1^T with a bias), theory.md sec. 3. Bias-free, U_a is a set
    of class indicator vectors and every Gram is diagonal.
    """

    def __init__(self, sol: MSESolution):
        p = sol.problem
        self.sol, self.K, self.M = sol, p.K, p.M
        act = sol.active
        self.s, self.c = sol.s[act], sol.c
        self.idx = None if sol.mode_class is None else sol.mode_class[act]
        Ua = sol.U[:, act]  # (K, r)
        self.Ua = Ua
        if p.bias:
            ybar = np.asarray(p.counts, dtype=np.float64) / p.N
            self.UaE = Ua.T - np.outer(Ua.T @ ybar, np.ones(self.K))  # (r, K) = U_a^T E
        else:
            self.UaE = Ua.T
        lam = np.asarray(p.lambda_w, dtype=np.float64)
        # sigma[j, i]: i-th singular value of W_{j+1}; balanced layers, theory.md sec. 1.1
        self.sigma = np.sqrt(p.lambda_bar / lam)[:, None] * self.s[None, :] ** (1.0 / (2 * self.M))

    def gram(self, v: np.ndarray, left_E: bool, right_E: bool) -> np.ndarray:
        if self.idx is not None:
            out = np.zeros((self.K, self.K))
            out[self.idx, self.idx] = v
            return out
        L = self.UaE if left_E else self.Ua.T
        R = self.UaE if right_E else self.Ua.T
        return L.T @ (v[:, None] * R)

    def gram_diag(self, v: np.ndarray, left_E: bool, right_E: bool) -> np.ndarray:
        if self.idx is not None:
            out = np.zeros(self.K)
            out[self.idx] = v
            return out
        L = self.UaE if left_E else self.Ua.T
        R = self.UaE if right_E else self.Ua.T
        return np.einsum("ik,i,ik->k", L, v, R)

    @property
    def feature_scale(self) -> np.ndarray:
        """s/(s+c)^2: eigenvalues of the class-mean Gram of H (per active mode)."""
        return self.s / (self.s + self.c) ** 2

    def layer(self, j: int) -> dict:
        """Structure of layer j (1-based): W_j and the features entering it."""
        pre = np.prod(self.sigma[: j - 1] ** 2, axis=0)  # W_{j-1}..W_1 squared singular values
        post = np.prod(self.sigma[j - 1 :] ** 2, axis=0)  # W_M..W_j
        p = self.sol.problem
        return {
            "layer": j,
            "shape": [p.widths[j] if j < self.M else self.K, p.widths[j - 1]],
            "sigma": self.sigma[j - 1],
            "mean_gram": self.gram(self.feature_scale * pre, True, True),
            "partial_gram": self.gram(post, False, False),
            "nc3_scale": self.gram((self.s + self.c) * post / self.s, False, False),
            "regularizer": 0.5 * p.lambda_w[j - 1] * float(np.sum(self.sigma[j - 1] ** 2)),
        }


class Prediction:
    """Global minimizer of the deep linear UFM for one :class:`Problem`.

    Attributes
    ----------
    problem : Problem
    objective : float, optimal value f* (for CE with M >= 2: the best value found, an upper bound)
    objective_zero : float, value at W_j = 0, H = 0 (b optimal)
    geometry : str, name of the optimal configuration
    WWt, HtH, WH : ndarray of shape (K, K), Grams of the classifier rows (W = W_M..W_1), of the
        class means Hbar (head input), and W Hbar. Computed on first access.
    gram_unique : bool, False where only the spectra are unique (bottleneck ties, thresholds)
    active : ndarray of bool, per class for bias-free MSE, per mode otherwise
    bias : ndarray of shape (K,) or None, optimal last-layer bias
    thresholds : dict, a*(M), minority-collapse class size, ... (MSE)
    layers : list of dict, per layer j = 1..M: ``sigma`` (nonzero singular values of W_j),
        ``mean_gram`` (Gram of the class means entering layer j), ``partial_gram``
        (P_j P_j^T, P_j = W_M..W_j), ``nc3_scale`` (C_j with P_j = C_j Hbar_j^T), ``regularizer``.
    ce : dict or None, CE-only results (``etf_objective``, ``etf_is_global``, ``best_structure``, ...)
    """

    def __init__(self, problem: Problem, *, mse: MSESolution | None = None, ce=None):
        self.problem = problem
        self._mse, self._ce = mse, ce
        if mse is not None:
            self._struct = MSEStructure(mse)
            self.objective = mse.objective
            self.objective_zero = mse.objective_zero
            self.gram_unique = mse.gram_unique
            self.uniqueness_note = mse.uniqueness_note
            self.geometry = geometry_name(problem, mse)
            self.thresholds = thresholds(problem, mse)
            if problem.bias:
                self.active = mse.active.copy()
                self.bias = np.asarray(problem.counts, dtype=np.float64) / problem.N
            else:
                self.active = np.zeros(problem.K, dtype=bool)
                self.active[mse.mode_class] = mse.active
                self.bias = None
            self.ce = None
        else:
            self.objective = ce.objective
            self.objective_zero = ce.objective_zero
            self.gram_unique = ce.gram_unique
            self.uniqueness_note = getattr(ce, "uniqueness_note", "")
            self.geometry = ce.best_structure
            self.thresholds = {}
            self.active = np.asarray(ce.active, dtype=bool)
            self.bias = None if ce.bias is None else np.asarray(ce.bias, dtype=np.float64)
            self.ce = {
                "etf_objective": ce.etf_objective,
                "etf_is_global": ce.etf_is_global,
                "etf_proven": ce.etf_proven,
                "best_structure": ce.best_structure,
                "best_rank": ce.best_rank,
                "etf_z": ce.etf_z,
                "candidates": ce.candidates,
            }

    # -- Grams, on demand (K x K each) --
    @cached_property
    def WWt(self) -> np.ndarray:
        if self._mse is None:
            return np.asarray(self._ce.WWt)
        return self._struct.gram(self._struct.s, False, False)

    @cached_property
    def HtH(self) -> np.ndarray:
        if self._mse is None:
            return np.asarray(self._ce.HtH)
        return self._struct.gram(self._struct.feature_scale, True, True)

    @cached_property
    def WH(self) -> np.ndarray:
        if self._mse is None:
            return np.asarray(self._ce.WH)
        st = self._struct
        return st.gram(st.s / (st.s + st.c), False, True)

    @cached_property
    def layers(self) -> list[dict]:
        if self._mse is None:
            return list(self._ce.layers)
        return [self._struct.layer(j) for j in range(1, self.problem.M + 1)]

    @cached_property
    def classes(self) -> dict:
        """Per-class table: n_k, ||w_k||^2, ||h_k||^2, logit of a class-k sample on class k."""
        if self._mse is None:
            w2, h2, own = np.diag(self.WWt), np.diag(self.HtH), np.diag(self.WH).copy()
        else:
            st = self._struct
            w2 = st.gram_diag(st.s, False, False)
            h2 = st.gram_diag(st.feature_scale, True, True)
            own = st.gram_diag(st.s / (st.s + st.c), False, True)
        if self.bias is not None:
            own = own + self.bias
        scale = max(float(w2.max()), 1e-300)
        return {
            "count": list(self.problem.counts),
            "active": [bool(v) for v in (w2 > 1e-12 * scale) & (w2 > 0)],
            "w_norm2": w2.tolist(),
            "h_norm2": h2.tolist(),
            "logit_own": own.tolist(),
        }

    def construct(self):
        """Explicit W_1..W_M (W_j of shape (d_{j+1}, d_j)), H (d x N) and b attaining ``objective``."""
        from nclab.theory.construct import construct_minimizer

        return construct_minimizer(self)

    def to_dict(self) -> dict:
        """JSON-ready dict (lists, floats, bools) of everything above."""
        from nclab import __version__

        def arr(v):
            return None if v is None else np.asarray(v).tolist()

        out = {
            "nclab_version": __version__,
            "problem": self.problem.to_dict(),
            "geometry": self.geometry,
            "objective": self.objective,
            "objective_zero": self.objective_zero,
            "gram_unique": self.gram_unique,
            "uniqueness_note": self.uniqueness_note,
            "active": arr(self.active),
            "active_per": "class" if (self.problem.loss == "mse" and not self.problem.bias) else "mode",
            "bias": arr(self.bias),
            "thresholds": self.thresholds,
            "classes": self.classes,
            "WWt": arr(self.WWt),
            "HtH": arr(self.HtH),
            "WH": arr(self.WH),
            "layers": [
                {k: (arr(v) if isinstance(v, np.ndarray) else v) for k, v in layer.items()}
                for layer in self.layers
            ],
        }
        if self._mse is not None:
            m = self._mse
            out["modes"] = {
                "mu": m.mu.tolist(),
                "a": [float(v) if np.isfinite(v) else None for v in m.a],
                "x": m.x.tolist(),
                "s": m.s.tolist(),
                "F": m.F.tolist(),
                "active": m.active.tolist(),
                "class": None if m.mode_class is None else m.mode_class.tolist(),
            }
        if self._ce is not None:
            # CE-only fields (etf_objective, etf_is_global, best_structure, search, notes, ...); the
            # shared ones (objective, Grams, layers, bias, active) are already above, from this object.
            shared = set(out) | {"problem", "Z"}
            out.update({k: v for k, v in self._ce.to_dict().items() if k not in shared})
        return out

    def __repr__(self) -> str:
        return f"Prediction(geometry={self.geometry!r}, objective={self.objective:.10g}, K={self.problem.K})"


def predict(
    counts: Sequence[int] | Problem | None = None,
    *,
    classes: int | None = None,
    per_class: int | None = None,
    depth: int | None = None,
    widths: Sequence[int] | int | None = None,
    lambda_w: Sequence[float] | float = 5e-4,
    lambda_h: float = 5e-4,
    bias: bool = False,
    loss: str = "mse",
    seed: int = 0,
) -> Prediction:
    """Closed-form global minimizer of the deep linear UFM.

    Parameters
    ----------
    counts : sequence of K ints, or a :class:`Problem` (then the other arguments are ignored)
    classes, per_class : balanced alternative to ``counts``
    depth : M, number of linear layers (default: len(widths) or len(lambda_w) or 1)
    widths : int or M ints [d, d_2, ..., d_M] (default 64 for every layer)
    lambda_w : float or M floats, weight decay of W_1..W_M (default 5e-4)
    lambda_h : float, feature decay (default 5e-4)
    bias : bool, unregularized last-layer bias (default False)
    loss : "mse" or "ce" (CE: balanced counts only)
    seed : int, seed of the CE low-rank search (MSE is deterministic)

    Examples
    --------
    >>> p = predict([200, 100, 50, 50], depth=3, lambda_w=5e-4, lambda_h=5e-4)
    >>> p.geometry
    'general orthogonal frame'
    """
    problem = counts if isinstance(counts, Problem) else make_problem(
        counts, classes=classes, per_class=per_class, depth=depth, widths=widths,
        lambda_w=lambda_w, lambda_h=lambda_h, bias=bias, loss=loss,
    )
    if problem.loss == "mse":
        return Prediction(problem, mse=solve_mse(problem))
    if not problem.balanced:
        raise ValueError(
            "CE with unequal class counts is not supported: the CE reduction (theory.md sec. 4) needs "
            "equal n_k, and no closed form is known for imbalanced CE"
        )
    from nclab.theory.ce import solve_ce

    return Prediction(problem, ce=solve_ce(problem, seed=seed))
