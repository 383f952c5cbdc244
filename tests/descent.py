"""Long float64 descent on the FULL deep linear UFM (every layer, all N feature columns).

An independent check of the closed forms: scipy's L-BFGS-B on the flattened parameters with
gradients from autograd through :func:`nclab.theory.ufm_objective_torch`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from nclab.theory import labels_from_counts, ufm_objective_torch


def descend(problem, start=None, *, seed=0, scale=0.3, maxiter=30000):
    """Minimize the full objective from ``start`` = (weights, H, b) or a random N(0, scale^2) point.

    Returns the final objective value (float).
    """
    K, dims = problem.K, list(problem.widths) + [problem.K]
    y = torch.as_tensor(labels_from_counts(problem.counts))
    rng = np.random.default_rng(seed)
    if start is None:
        weights = [scale * rng.standard_normal((dims[j + 1], dims[j])) for j in range(problem.M)]
        H = scale * rng.standard_normal((dims[0], problem.N))
        b = scale * rng.standard_normal(K) if problem.bias else None
    else:
        weights, H, b = start
    shapes = [w.shape for w in weights] + [H.shape] + ([b.shape] if b is not None else [])
    sizes = [int(np.prod(s)) for s in shapes]
    x0 = np.concatenate([np.ravel(a) for a in list(weights) + [H] + ([b] if b is not None else [])])

    def unpack(t):
        parts, i = [], 0
        for s, n in zip(shapes, sizes):
            parts.append(t[i : i + n].reshape(s))
            i += n
        return parts

    def fun(x):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        parts = unpack(t)
        ws, Ht = parts[: problem.M], parts[problem.M]
        bt = parts[problem.M + 1] if problem.bias else None
        f = ufm_objective_torch(ws, Ht, y, problem.lambda_w, problem.lambda_h, bt, problem.loss, K)
        f.backward()
        return f.item(), t.grad.numpy().copy()

    res = minimize(
        fun, x0, jac=True, method="L-BFGS-B",
        options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 1e-16, "gtol": 1e-13, "maxcor": 30},
    )
    return float(res.fun)


def perturb(start, eps, seed=0):
    rng = np.random.default_rng(seed)
    weights, H, b = start
    return (
        [w + eps * rng.standard_normal(w.shape) for w in weights],
        H + eps * rng.standard_normal(H.shape),
        None if b is None else b + eps * rng.standard_normal(b.shape),
    )
