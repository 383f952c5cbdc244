"""``nclab.predict``: the global minimizer of the deep linear UFM for one setting, as one object."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from nclab.theory.mse import _LOG_MAX, MSESolution, geometry_name, solve_mse, thresholds
from nclab.theory.problem import Problem, check_int, make_problem

#: above this K, Prediction.to_dict (and nclab predict --json) leaves the dense K x K Grams out
DENSE_JSON_MAX_K = 32


class MSEStructure:
    """Grams of the MSE minimizer in structured form (structure.py), dense K x K only on demand.

    Every Gram has the form L diag(v) R^T over the active modes (theory.md sec. 3): bias-free the modes are
    class indicators and every Gram is diagonal; with a bias they are the eigenvectors of D - n n^T/N held as
    secular roots and blocks of equal counts (structure.SecularBasis), centred by E = I - ybar 1^T where the
    Gram needs it. Per-mode values are computed from logarithms (log s, log c, log lambda_j) and exponentiated
    once, so they are right wherever they fit in float64; :meth:`check_finite` refuses the rest.
    """

    def __init__(self, sol: MSESolution):
        from nclab.theory.structure import DiagonalBasis

        p = sol.problem
        self.sol, self.K, self.M = sol, p.K, p.M
        act = sol.active
        if sol.mode_class is not None:
            self.basis = DiagonalBasis(p.K, sol.mode_class[act])
            first = np.flatnonzero(act)
        else:
            self.basis = sol.basis
            first = self.basis.first
        self.idx = None if sol.mode_class is None else sol.mode_class[act]
        self.s, self.c = sol.s[first], sol.c
        ls = sol.log_s[first]
        self.log_s = ls
        lsc = np.logaddexp(ls, sol.log_c)  # log(s + c)
        self._log_feature_scale = ls - 2.0 * lsc
        with np.errstate(under="ignore", over="ignore"):  # an overflow is refused, with its size, by check_finite
            self.feature_scale = np.exp(self._log_feature_scale)  # s/(s+c)^2: class-mean Gram of H per mode
            self.logit_scale = np.exp(ls - lsc)  # s/(s+c): W Hbar per mode
        lam = np.log(np.asarray(p.lambda_w, dtype=np.float64))
        lbar = float(np.mean(lam))
        # log sigma[j, i]^2 of W_{j+1}: balanced layers, theory.md sec. 1.1
        self._log_sig2 = (lbar - lam)[:, None] + ls[None, :] / self.M
        cum = np.cumsum(self._log_sig2, axis=0)  # log prod_{l<=j} sigma_l^2
        zero = np.zeros((1, ls.size))
        self._log_pre = np.concatenate([zero, cum[:-1]], axis=0)  # prod_{l<j}: W_{j-1}..W_1
        self._log_post = cum[-1][None, :] - self._log_pre  # prod_{l>=j}: W_M..W_j
        self._log_nc3 = lsc[None, :] - ls[None, :] + self._log_post
        with np.errstate(under="ignore"):
            self.sigma = np.exp(0.5 * self._log_sig2)
        mult = self.basis.mult
        self._reg_log = np.log(0.5) + lbar + (
            np.logaddexp.reduce(ls / self.M + np.log(np.maximum(mult, 1))) if ls.size else -np.inf)

    def check_finite(self) -> None:
        """One ValueError if any Gram entry or per-layer value would overflow float64."""
        p = self.sol.problem
        logs = {
            "squared singular values of W_M...W_1": self.log_s,
            "per-layer singular values": 0.5 * self._log_sig2,
            "per-layer class-mean Grams": self._log_feature_scale + self._log_pre,
            "partial products W_M...W_j": self._log_post,
            "NC3 scales C_j": self._log_nc3,
        }
        for what, v in logs.items():
            if v.size and float(np.max(v)) + np.log(max(self.K, 1)) > _LOG_MAX:
                raise ValueError(
                    f"the optimal {what} exceed float64 (~1e{float(np.max(v)) / np.log(10):.0f}) for lambda_w = "
                    f"{list(p.lambda_w)}, lambda_H = {p.lambda_h:g}, M = {p.M}; use less extreme weight decays"
                )

    def gram(self, v: np.ndarray, left_E: bool, right_E: bool) -> np.ndarray:
        return self.basis.dense(v, "u", "u", left_E, right_E)

    def layer_values(self, j: int) -> dict:
        """Per-mode values of layer j's (1-based) mean_gram, partial_gram and nc3_scale."""
        with np.errstate(under="ignore", over="ignore"):
            pre, post, nc3 = (np.exp(v[j - 1]) for v in (self._log_pre, self._log_post, self._log_nc3))
        return {"mean_gram": self.feature_scale * pre, "partial_gram": post, "nc3_scale": nc3}

    @property
    def regularizer(self) -> float:
        with np.errstate(under="ignore"):
            return float(np.exp(self._reg_log))

    def layer(self, j: int) -> dict:
        """Structure of layer j (1-based): W_j and the features entering it (dense Grams)."""
        p = self.sol.problem
        v = self.layer_values(j)
        return {
            "layer": j,
            "shape": [p.widths[j] if j < self.M else self.K, p.widths[j - 1]],
            "sigma": self.sigma[j - 1],
            "mean_gram": self.gram(v["mean_gram"], True, True),
            "partial_gram": self.gram(v["partial_gram"], False, False),
            "nc3_scale": self.gram(v["nc3_scale"], False, False),
            "regularizer": self.regularizer,
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
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be an nclab.theory.Problem (see make_problem), got {type(problem).__name__}")
        if (mse is None) == (ce is None):
            raise TypeError("give exactly one of mse= (an MSESolution) or ce= (a CESolution); see nclab.predict")
        if mse is not None and not isinstance(mse, MSESolution):
            raise TypeError(f"mse must be an MSESolution (from solve_mse), got {type(mse).__name__}")
        if ce is not None and not hasattr(ce, "best_structure"):
            raise TypeError(f"ce must be a CESolution (from solve_ce), got {type(ce).__name__}")
        self.problem = problem
        self._mse, self._ce = mse, ce
        self._threshold_seed = None  # imbalanced CE, M >= 2: the minority threshold is searched on first access
        if mse is not None:
            self._struct = MSEStructure(mse)
            self._struct.check_finite()
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
            if hasattr(ce, "certified") and problem.M == 1:  # imbalanced M = 1: a certified convex solve
                self.ce.update(certified=bool(ce.certified), duality_gap=float(ce.gap),
                               relative_duality_gap=float(ce.rel_gap), lower_bound=float(ce.lower_bound),
                               merged=[list(map(int, g)) for g in ce.merged],
                               collapse_count=float(ce.collapse_count))
                self.thresholds = {"collapse_count": float(ce.collapse_count)}
                if getattr(ce, "minority_threshold", None) is not None:
                    self.thresholds["minority_count_threshold"] = dict(ce.minority_threshold)
            elif hasattr(ce, "certified"):  # imbalanced M >= 2: the best structure found by the rank search
                self.ce.update(certified=False, duality_gap=None, relative_duality_gap=None, lower_bound=None,
                               merged=[list(map(int, g)) for g in ce.merged], ranks_searched=list(ce.search["ranks"]),
                               best_per_rank=dict(ce.search["best_per_rank"]))
                self.thresholds = {}
                if ce.minority_threshold is not None:
                    self.thresholds["minority_count_threshold"] = dict(ce.minority_threshold)
                else:  # best found by bisection on the search (~10 searches): computed when first read
                    self._threshold_seed = int(ce.search.get("seed", 0))

    @property
    def thresholds(self) -> dict:
        """Thresholds of the setting (MSE: a*(M), n_thr, ...; imbalanced CE: ``minority_count_threshold``, exact
        at M = 1, best found by bisection on the rank search at M >= 2, computed on first access)."""
        if self._threshold_seed is not None:
            from nclab.theory.ce_imbalanced import _threshold_text, deep_minority_threshold

            thr = deep_minority_threshold(self.problem, rtol=1e-2, seed=self._threshold_seed)
            self._threshold_seed = None
            if thr is not None:
                thr["text"] = _threshold_text(thr)
                self._thresholds["minority_count_threshold"] = thr
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value: dict) -> None:
        self._thresholds = value

    # -- structure: every Gram as per-mode values over one basis (structure.py) --
    @cached_property
    def _parts(self):
        """(basis, {WWt, HtH, WH: per-mode values}, sigma (M, modes), regularizer)."""
        if self._mse is not None:
            st = self._struct
            return st.basis, {"WWt": st.s, "HtH": st.feature_scale, "WH": st.logit_scale}, st.sigma, \
                st.regularizer
        ce = self._ce
        return ce.basis, ce.values, np.asarray(ce.sigma), ce.regularizer

    def _layer_values(self, j: int) -> dict:
        if self._mse is not None:
            return self._struct.layer_values(j)
        from nclab.theory.structure import layer_values

        _, vals, sigma, _ = self._parts
        return layer_values(vals["HtH"], sigma, j)

    @property
    def structure(self) -> dict:
        """The Grams without K x K matrices: ``basis`` (structure.Basis), ``values`` (per-mode values of
        WWt, HtH, WH), ``sigma`` (M x modes singular values of W_j), ``layers`` (per-mode values of each layer's
        mean_gram, partial_gram, nc3_scale). See nclab.theory.structure."""
        basis, vals, sigma, _ = self._parts
        return {"basis": basis, "values": vals, "sigma": sigma,
                "layers": [self._layer_values(j) for j in range(1, self.problem.M + 1)]}

    def gram(self, name: str, layer: int | None = None) -> np.ndarray:
        """Dense K x K Gram, built now: ``WWt``, ``HtH``, ``WH``, or with ``layer`` j (1..M) ``mean_gram``,
        ``partial_gram``, ``nc3_scale``. Refused before allocating when it cannot fit."""
        from nclab.theory.structure import GRAMS, LAYER_SIDES

        basis, vals, _, _ = self._parts
        if layer is None:
            if name not in GRAMS:
                raise ValueError(f"name must be one of {', '.join(GRAMS)} (or a layer Gram with layer=j), "
                                 f"got {name!r}")
            if self._mse is None and getattr(self._ce, name, None) is not None:
                return np.array(getattr(self._ce, name))
            left, right, le, re_ = GRAMS[name]
            return basis.dense(vals[name], left, right, le, re_)
        if name not in LAYER_SIDES:
            raise ValueError(f"layer Grams are {', '.join(LAYER_SIDES)}, got {name!r}")
        M = self.problem.M
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= M:
            raise ValueError(f"layer must be 1..{M}, got {layer!r}")
        if self._mse is None and self._ce.layers is not None:
            g = self._ce.layers[layer - 1][name]
            return None if g is None else np.array(g)
        left, right, le, re_ = LAYER_SIDES[name]
        return basis.dense(self._layer_values(int(layer))[name], left, right, le, re_)

    # -- dense Grams, on demand (K x K each; kept for the small-K API) --
    @cached_property
    def WWt(self) -> np.ndarray:
        return self.gram("WWt")

    @cached_property
    def HtH(self) -> np.ndarray:
        return self.gram("HtH")

    @cached_property
    def WH(self) -> np.ndarray:
        return self.gram("WH")

    @cached_property
    def layers(self) -> list[dict]:
        if self._mse is None and self._ce.layers is not None:
            return list(self._ce.layers)
        if self._mse is not None:
            return [self._struct.layer(j) for j in range(1, self.problem.M + 1)]
        from nclab.theory.structure import check_dense

        check_dense(self.problem.K, 3 * self.problem.M, "the per-layer Grams")
        _, _, sigma, reg = self._parts
        p = self.problem
        return [{"sigma": sigma[j - 1], "mean_gram": self.gram("mean_gram", j),
                 "partial_gram": self.gram("partial_gram", j), "nc3_scale": self.gram("nc3_scale", j),
                 "regularizer": reg} for j in range(1, p.M + 1)]

    @cached_property
    def classes(self) -> dict:
        """Per-class table (lists of K values), O(K): no K x K matrix.

        ``count`` n_k; ``w_norm`` ||w_k|| (row k of W = W_M..W_1) and ``h_norm`` ||h_k|| (class mean at
        the head input; centred with a bias), with their squares ``w_norm2``, ``h_norm2``; ``logit_own``
        w_k . h_k (+ b_k), the output of class k on its own samples (target 1 for MSE); ``margin`` own
        logit minus the largest other logit of a class-k sample (NaN where it is not computed: a bias with
        more than ~1,500 distinct class counts); ``collapsed`` w_k = 0 and h_k = 0 (minority collapse);
        ``active`` not collapsed.
        """
        from nclab.theory.structure import GRAMS, ProjectorBasis, SecularBasis, ZeroBasis

        K = self.problem.K
        basis, vals, _, _ = self._parts
        if self._mse is None and self._ce.Z is not None:
            w2, h2, own = np.diag(self.WWt).copy(), np.diag(self.HtH).copy(), np.diag(self.WH).copy()
        else:
            w2, h2, own = (basis.diag(vals[k], *GRAMS[k]) for k in ("WWt", "HtH", "WH"))
        w2, h2 = np.maximum(w2, 0.0), np.maximum(h2, 0.0)
        if self._mse is not None and not self.problem.bias:
            collapsed = ~self.active
            # bias-free MSE: the logits of a class-k sample are (W h_k)_j = 0 for j != k (diagonal Grams)
            margin = own.copy()
        else:
            scale_w, scale_h = max(float(w2.max()), 1e-300), max(float(h2.max()), 1e-300)
            collapsed = (w2 <= 1e-12 * scale_w) & (h2 <= 1e-12 * scale_h)
            if self._mse is None and self._ce.Z is not None:
                Z = self.WH + (0.0 if self.bias is None else self.bias[:, None])  # column k: logits of class k
                own_z = np.diag(Z).copy()
                Z[np.arange(K), np.arange(K)] = -np.inf
                margin = own_z - Z.max(axis=0)
            elif isinstance(basis, SecularBasis):
                margin = basis.margins(vals["WH"], self.bias)
                if margin is None:
                    margin = np.full(K, np.nan)
            elif isinstance(basis, ProjectorBasis):
                margin = basis.margins(float(vals["WH"][0]), self.bias)
            elif isinstance(basis, ZeroBasis):
                b = np.zeros(K) if self.bias is None else self.bias
                top2 = np.sort(b)[-2:] if K >= 2 else b
                margin = b - np.where(b == top2[-1], top2[0], top2[-1])
            else:  # pragma: no cover - dense codes always have Z
                margin = np.full(K, np.nan)
        if self.bias is not None:
            own = own + self.bias
        return {
            "count": list(self.problem.counts),
            "active": [bool(not v) for v in collapsed],
            "collapsed": [bool(v) for v in collapsed],
            "w_norm": np.sqrt(w2).tolist(),
            "h_norm": np.sqrt(h2).tolist(),
            "w_norm2": w2.tolist(),
            "h_norm2": h2.tolist(),
            "logit_own": own.tolist(),
            "margin": margin.tolist(),
        }

    def construct(self):
        """Explicit W_1..W_M (W_j of shape (d_{j+1}, d_j)), H (d x N) and b attaining ``objective``.

        Refused before allocating (with the memory it would need) when the matrices cannot fit."""
        from nclab.theory.construct import construct_minimizer

        return construct_minimizer(self)

    def to_dict(self, dense: bool | None = None) -> dict:
        """JSON-ready dict (lists, floats, bools); every float is finite or None.

        Always: the setting, objective, geometry, thresholds, the per-class table ``classes``, the per-mode
        solution ``modes`` (MSE), per layer ``sigma``/``regularizer``/``shape``, and ``structure``: the Grams
        as per-mode values over a basis (nclab.theory.structure.gram_from_dict rebuilds any of them), O(K).
        ``dense`` (default: K <= DENSE_JSON_MAX_K = 32) also writes the K x K matrices WWt, HtH, WH and per layer
        mean_gram, partial_gram, nc3_scale as nested lists (refused when they cannot fit).
        """
        from nclab import __version__
        from nclab.theory.resources import check_memory

        K, M = self.problem.K, self.problem.M
        if dense is None:
            dense = K <= DENSE_JSON_MAX_K
        if dense:
            check_memory(
                60.0 * (3 + 3 * M) * K * K,
                f"the dense prediction (Grams WWt, HtH, WH and 3 per layer: {3 + 3 * M} matrices of {K:,} x {K:,})",
                "the structured prediction (dense=False, the default above K = 32) needs no K x K matrix",
            )

        def arr(v):
            if v is None:
                return None
            a = np.asarray(v)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return np.where(np.isfinite(a), a, None).tolist()
            return a.tolist()

        basis, vals, sigma, reg = self._parts
        structure = {"basis": basis.to_dict(), "multiplicity": basis.mult.tolist(),
                     "values": {k: arr(v) for k, v in vals.items()},
                     "layers": "per layer j: mean_gram = HtH * prod_{l<j} sigma_l^2 (sides of HtH), partial_gram = "
                               "prod_{l>=j} sigma_l^2 (sides of WWt), nc3_scale = sqrt(partial_gram / mean_gram) "
                               "(sides of WH, not centred); nclab.theory.structure.gram_from_dict builds them"}
        layers = []
        for j in range(1, M + 1):
            lay = {"layer": j, "shape": [self.problem.widths[j] if j < M else K, self.problem.widths[j - 1]],
                   "sigma": arr(sigma[j - 1]), "regularizer": reg}
            if dense:
                for key in ("mean_gram", "partial_gram", "nc3_scale"):
                    lay[key] = arr(self.gram(key, j))
            layers.append(lay)
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
            "dense": bool(dense),
            "structure": structure,
        }
        if dense:
            out.update({"WWt": arr(self.WWt), "HtH": arr(self.HtH), "WH": arr(self.WH)})
        out["layers"] = layers
        if self._mse is not None:
            m = self._mse
            out["modes"] = {
                "mu": arr(m.mu),
                "log_a": arr(m.log_a),
                "log_x": arr(m.log_x),
                "s": m.s.tolist(),
                "F": m.F.tolist(),
                "active": m.active.tolist(),
                "class": None if m.mode_class is None else m.mode_class.tolist(),
            }
        if self._ce is not None:
            # CE-only fields (etf_objective, etf_is_global, best_structure, search, notes, ...); the
            # shared ones (objective, Grams, layers, bias, active) are already above, from this object.
            shared = set(out) | {"problem", "Z", "WWt", "HtH", "WH", "layers", "minority_threshold"}
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
    search: bool | None = None,
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
    loss : "mse" or "ce" (CE with unequal counts: M = 1 certified by a duality gap, M >= 2 the best structure
        found by a rank search, ``certified: False``; nclab.theory.ce_imbalanced)
    seed : int, seed of the CE low-rank search (MSE is deterministic)
    search : CE only: run the low-rank search (default: for K <= 128, the largest K it handles; beyond it
        the structured candidates are compared in O(K) and True is refused with that reason)

    Examples
    --------
    >>> p = predict([200, 100, 50, 50], depth=3, lambda_w=5e-4, lambda_h=5e-4)
    >>> p.geometry
    'general orthogonal frame'
    """
    if isinstance(counts, Problem):  # validated again: a Problem can be built without make_problem
        q = counts
        problem = make_problem(list(q.counts), widths=list(q.widths), lambda_w=list(q.lambda_w),
                               lambda_h=q.lambda_h, bias=q.bias, loss=q.loss)
    else:
        problem = make_problem(
            counts, classes=classes, per_class=per_class, depth=depth, widths=widths,
            lambda_w=lambda_w, lambda_h=lambda_h, bias=bias, loss=loss,
        )
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    if problem.loss == "mse":
        return Prediction(problem, mse=solve_mse(problem))
    if not problem.balanced:
        if problem.M == 1:  # a convex problem in the class logits: solved to a certified duality gap
            from nclab.theory.ce_imbalanced import as_ce_solution

            return Prediction(problem, ce=as_ce_solution(problem))
        if search is False:
            raise ValueError("search=False: CE with unequal counts and M >= 2 has no closed form; its answer is the "
                             "rank search (search=None or True)")
        # M >= 2: nonconvex (Schatten quasi-norm); the best structure found by the rank search, not certified
        from nclab.theory.ce_imbalanced import as_ce_solution_deep

        return Prediction(problem, ce=as_ce_solution_deep(problem, seed=seed))
    from nclab.theory.ce import solve_ce

    return Prediction(problem, ce=solve_ce(problem, seed=seed, search=search))
