"""The deep linear UFM as a trainable object: H (d x N), W_1..W_M, optional bias, in one flat tensor.

Every parameter is a view of one contiguous tensor ``flat`` (layout: W_1, ..., W_M, H, b), and the
gradient is a view-for-view twin ``grad``: an optimizer then updates one tensor with two fused ops.

Two gradients of the SAME objective (:func:`nclab.theory.ufm_objective_torch`):

* :meth:`UFM.autograd_loss` -- autograd through the shared definition (the general fallback);
* :meth:`UFM.gradient_` -- the gradient written out by hand, products reordered (performance.md).
  With G = dL/dZ (K x N), suffix products Q_j = W_M..W_{j+1} (K x d_{j+1}, Q_M = I) and
  R_j = S W_1^T .. W_{j-1}^T with S = G H^T (K x d):

      grad W_j = Q_j^T R_j + lambda_j W_j,  grad H = Q_0^T G + lambda_H H,  grad b = G 1,

  which needs only K x d x d products besides the three K x d x N ones (Z, S, grad H). A test checks
  it against autograd of the shared objective to 1e-12 in float64.

With ``activation="relu"`` (the deep ReLU UFM, :mod:`nclab.ufm.dnc`) the objective is
:func:`ufm_objective` (H_{j+1} = ReLU(W_j H_j) for j < M, the last layer linear, no hidden biases) and
:meth:`UFM.gradient_` is plain back-propagation through it (relu'(0) = 0, as autograd); a test checks it
against autograd. ``activation="identity"`` keeps the code above unchanged (bitwise-equal runs).
"""

from __future__ import annotations

import torch

from nclab.theory import Problem, labels_from_counts, ufm_objective_torch

ACTIVATIONS = ("identity", "relu")


def parameter_count(K: int, N: int, widths) -> int:
    """Entries of W_1..W_M (widths d_1..d_M, K outputs), H (d_1 x N) and a bias (K, counted with or without one):
    what memory checks and work estimates of a UFM size."""
    widths = list(widths)
    return widths[0] * N + sum(a * b for a, b in zip(widths[1:] + [K], widths)) + K


def ufm_objective(weights, H, labels, lambda_w, lambda_h, bias=None, loss: str = "mse", num_classes=None,
                  activation: str = "identity") -> torch.Tensor:
    """THE objective of the deep UFM with an activation between the layers (a differentiable scalar tensor).

    ``activation="identity"`` is :func:`nclab.theory.ufm_objective_torch` itself (the deep linear UFM).
    ``activation="relu"``: H_1 = H, H_{j+1} = ReLU(W_j H_j) for j = 1..M-1, logits Z = W_M H_M (+ b), and

        f = L(Z) + sum_j lambda_j/2 ||W_j||_F^2 + lambda_H/2 ||H||_F^2

    with the same data terms as the linear model (MSE 1/(2N) ||Z - Y||^2, CE the mean cross-entropy) and no
    hidden-layer biases (the papers' deep unconstrained features model). With M = 1 both activations agree.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return ufm_objective_torch(weights, H, labels, lambda_w, lambda_h, bias, loss, num_classes, activation=activation)


class UFM:
    """Parameters and preallocated work buffers of one deep linear UFM.

    Parameters
    ----------
    problem : Problem, the setting (counts, widths, lambdas, bias, loss)
    dtype : torch.float32 or torch.float64
    device : torch device ("cpu", "cuda", ...)

    Attributes
    ----------
    flat, grad : tensors of shape (P,), all parameters / their gradient
    weights : list of M views, W_j of shape (d_{j+1}, d_j) (d_{M+1} = K)
    H : view of shape (d, N), features, columns grouped by class (labels ``labels_from_counts``)
    bias : view of shape (K,) or None
    labels : int64 tensor (N,)
    activation : "identity" (the deep linear UFM) or "relu" (ReLU between the layers)
    """

    def __init__(self, problem: Problem, *, dtype: torch.dtype = torch.float64, device="cpu",
                 activation: str = "identity"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.problem = p = problem
        self.dtype, self.device = dtype, torch.device(device)
        K, N, M = p.K, p.N, p.M
        dims = list(p.widths) + [K]
        self.dims = dims
        shapes = [(dims[j + 1], dims[j]) for j in range(M)] + [(dims[0], N)] + ([(K,)] if p.bias else [])
        sizes = [int(torch.Size(s).numel()) for s in shapes]
        total = sum(sizes)
        kw = dict(dtype=dtype, device=self.device)
        self.flat = torch.zeros(total, **kw)
        self.grad = torch.zeros(total, **kw)
        self.decay = torch.zeros(total, **kw)  # per-entry lambda (0 on the bias)

        def views(t):
            out, i = [], 0
            for s, n in zip(shapes, sizes):
                out.append(t[i : i + n].view(s))
                i += n
            return out

        pv, gv, dv = views(self.flat), views(self.grad), views(self.decay)
        self.weights, self.H = pv[:M], pv[M]
        self.bias = pv[M + 1] if p.bias else None
        self.gweights, self.gH = gv[:M], gv[M]
        self.gbias = gv[M + 1] if p.bias else None
        for lam, dvw in zip(p.lambda_w, dv[:M]):
            dvw.fill_(lam)
        dv[M].fill_(p.lambda_h)
        self.shapes, self.sizes = shapes, sizes

        self.labels = torch.as_tensor(labels_from_counts(p.counts), device=self.device)
        self.Y = torch.nn.functional.one_hot(self.labels, K).T.to(dtype).contiguous()  # (K, N)
        # work buffers (0-based layer index j = 0..M-1):
        #   Q[j] = W_M..W_{j+1} in 1-based terms, the product of layers j..M-1, shape (K, d_j); Q[M-1] = W_M
        #   R[j] = S W_1^T..W_j^T, shape (K, d_j) (R[0] = S = G H^T / N)
        self.Q = [torch.empty(K, dims[j], **kw) for j in range(M - 1)] + [self.weights[M - 1]]
        self.R = [torch.empty(K, dims[j], **kw) for j in range(M)]
        self.Z = torch.empty(K, N, **kw)
        self.G = torch.empty(K, N, **kw)
        self.inv_n = 1.0 / N

    # ------------------------------------------------------------------ initialization / state
    def init_(self, seed: int, std: float) -> None:
        """Every entry (weights, features, bias) i.i.d. N(0, std^2), drawn in float64 on the CPU from
        ``seed`` and then cast, so float32/float64 and CPU/CUDA runs start from the same point."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        x = torch.randn(self.flat.numel(), generator=g, dtype=torch.float64) * float(std)
        self.flat.copy_(x)

    def set_(self, weights, H, bias=None) -> None:
        """Copy given parameters (numpy arrays or tensors) into the model."""
        for dst, src in zip(self.weights, weights):
            dst.copy_(torch.as_tensor(src))
        self.H.copy_(torch.as_tensor(H))
        if self.bias is not None:
            self.bias.copy_(torch.as_tensor(bias))

    def unpack(self, flat: torch.Tensor):
        """(weights, H, bias) views of any tensor with ``flat``'s layout."""
        out, i = [], 0
        for s, n in zip(self.shapes, self.sizes):
            out.append(flat[i : i + n].view(s))
            i += n
        M = self.problem.M
        return out[:M], out[M], (out[M + 1] if self.problem.bias else None)

    # ------------------------------------------------------------------ objective and gradients
    def objective(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        """The shared objective at ``flat`` (default: the current parameters), a scalar tensor."""
        p = self.problem
        ws, H, b = self.unpack(self.flat if flat is None else flat)
        if self.activation != "identity":
            return ufm_objective(ws, H, self.labels, p.lambda_w, p.lambda_h, b, p.loss, p.K, self.activation)
        return ufm_objective_torch(ws, H, self.labels, p.lambda_w, p.lambda_h, b, p.loss, p.K)

    def autograd_loss(self) -> torch.Tensor:
        """Objective with its gradient (by autograd through the shared definition) written to ``grad``."""
        with torch.enable_grad():  # the training loop runs under no_grad
            x = self.flat.detach().requires_grad_(True)
            f = self.objective(x)
            (g,) = torch.autograd.grad(f, x)
        self.grad.copy_(g)
        return f.detach()

    def gradient_(self, with_loss: bool = False) -> torch.Tensor | None:
        """Hand-written gradient of the shared objective into ``grad``; optionally the value (a 0-d tensor).

        Numerically the same function as :meth:`autograd_loss` (float64 agreement ~1e-15 relative).
        """
        if self.activation != "identity":
            return self._relu_gradient_(with_loss)
        p = self.problem
        M, Ws, Q, R = p.M, self.weights, self.Q, self.R
        reg = 0.5 * torch.dot(self.decay * self.flat, self.flat) if with_loss else None
        for j in range(M - 2, -1, -1):
            torch.mm(Q[j + 1], Ws[j], out=Q[j])
        Z, G = self.Z, self.G
        if self.bias is None:
            torch.mm(Q[0], self.H, out=Z)  # (K, N) logits
        else:
            torch.addmm(self.bias[:, None], Q[0], self.H, out=Z)
        data = self._residual_(with_loss)  # G = N * dL/dZ
        # S = G H^T / N, then R[j] = R[j-1] W_j^T
        torch.addmm(R[0], G, self.H.T, beta=0, alpha=self.inv_n, out=R[0])
        for j in range(1, M):
            torch.mm(R[j - 1], Ws[j - 1].T, out=R[j])
        # decay terms ride along in the GEMMs: out = lambda * param + Q^T R (no separate pass over ``flat``)
        lam, gW = p.lambda_w, self.gweights
        for j in range(M - 1):
            torch.addmm(Ws[j], Q[j + 1].T, R[j], beta=lam[j], out=gW[j])
        torch.add(R[M - 1], Ws[M - 1], alpha=lam[M - 1], out=gW[M - 1])
        torch.addmm(self.H, Q[0].T, G, beta=p.lambda_h, alpha=self.inv_n, out=self.gH)
        if self.gbias is not None:
            torch.sum(G, dim=1, out=self.gbias)
            self.gbias.mul_(self.inv_n)
        return data + reg if with_loss else None

    def _residual_(self, with_loss: bool) -> torch.Tensor | None:
        """From the logits in ``Z``: ``G`` = N dL/dZ (MSE: Z - Y; CE: softmax(Z) - Y), and the data loss when
        ``with_loss`` (a 0-d tensor)."""
        Z, G = self.Z, self.G
        if self.problem.loss == "mse":
            torch.sub(Z, self.Y, out=G)
            return 0.5 * self.inv_n * torch.dot(G.view(-1), G.view(-1)) if with_loss else None
        logp = torch.log_softmax(Z, dim=0)
        data = -self.inv_n * (logp * self.Y).sum() if with_loss else None
        torch.exp(logp, out=G)
        G.sub_(self.Y)
        return data

    def _relu_gradient_(self, with_loss: bool = False) -> torch.Tensor | None:
        """Back-propagation through :func:`ufm_objective` with ReLU (same function as autograd, relu'(0) = 0)."""
        p = self.problem
        M, Ws = p.M, self.weights
        feats = [self.H]  # H_1 .. H_M (post-activation)
        for j in range(M - 1):
            feats.append(torch.relu(Ws[j] @ feats[-1]))
        Z, G = self.Z, self.G
        if self.bias is None:
            torch.mm(Ws[M - 1], feats[-1], out=Z)
        else:
            torch.addmm(self.bias[:, None], Ws[M - 1], feats[-1], out=Z)
        data = self._residual_(with_loss)
        G.mul_(self.inv_n)  # dL/dZ
        lam, gW = p.lambda_w, self.gweights
        back = G
        for j in range(M - 1, -1, -1):
            torch.addmm(Ws[j], back, feats[j].T, beta=lam[j], out=gW[j])
            back = Ws[j].T @ back
            if j > 0:
                back = back * (feats[j] > 0)
        torch.add(back, self.H, alpha=p.lambda_h, out=self.gH)
        if self.gbias is not None:
            torch.sum(G, dim=1, out=self.gbias)
        if not with_loss:
            return None
        reg = 0.5 * torch.dot(self.decay * self.flat, self.flat)
        return data + reg
