"""Many UFM runs of one shape as one batched tensor program: :func:`simulate_batch`.

Runs that share the shape (K, N, widths, bias, loss), the optimizer, dtype, device, step count, schedule and
snapshot/checkpoint intervals are trained together: every parameter is a (B, ...) tensor and every product a
batched matmul over the leading run axis. Per run: seed, init, init_std, lambdas, learning rate, momentum,
class counts (of one N) and ``stop_rel_gap``. Each run keeps its own folder, written as :func:`nclab.simulate`
writes it (the same files, rows, checkpoints and statuses; the objective agrees to round-off, ~1e-13 relative
in float64): a run that reaches ``stop_rel_gap`` or diverges is frozen and dropped from the batch, the rest go on.

Two exact formulations of the same iterates (method="auto" picks the faster one):

* ``direct`` -- the hand-written gradient of :class:`nclab.ufm.model.UFM` with a run axis (any loss, SGD or Adam).
* ``reduced`` -- MSE with SGD: the update of H is linear in H, so H = A Y + P X keeps the form of class means
  A (d x K) plus a within-class part P X, with X (r x N) a fixed orthonormal basis of the within-class rows
  (r <= 2d) and P (d x r) evolving:  grad A = lambda_H A + Q0^T (Q0 A + b 1^T - I)/N,
  grad P = lambda_H P + Q0^T Q0 P / N,  G H^T = (Q0 A + b 1^T - I) D A^T + Q0 P P^T  (D = diag(n_k)).
  A and P are one block [A | P] (d x (K + r)): with Z = Q0 [A | P] - [I | 0] (+ b on Z's first K columns),
  grad [A | P] = lambda_H [A | P] + Q0^T Z / N and G H^T = (Z diag(n_1..n_K, 1..1)) [A | P]^T: one GEMM each.
  Every product is K x d x d instead of K x d x N, and H is formed only for checkpoints and the end.

Snapshots are batched too (:mod:`nclab.ufm.batch_metrics`): the same metrics row as the per-run Snapshotter.

Speed (SGD): the step is bound by passes over the runs' d x d blocks and small-op overhead, not by FLOPs, so (1) the
batch is swept in cache-sized chunks (:attr:`BatchUFM.CHUNK_BYTES`), each taking every step up to the next
snapshot, and (2) with one lr and momentum per chunk the gradient's GEMMs accumulate straight into the momentum
buffer (buf = mu buf + Q^T R + lambda W), then p -= lr buf: three passes per block instead of four; with one lambda
per chunk too (runs sorted by lr, momentum and lambdas, chunks ending where they change), a constant lr and float64,
the decay moves into a reparametrized buffer (:meth:`BatchUFM._sgd_lerp`): two passes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch

from nclab.ufm.batch_metrics import BatchSnapshotter, unsafe
from nclab.ufm.config import SimulateConfig, auto_checkpoint_seconds
from nclab.ufm.model import parameter_count
from nclab.ufm.trainer import (
    DEFAULTS,
    FINISHED,
    KIND,
    CheckpointSchedule,
    SimulationResult,
    Trainer,
    _result_from_store,
    _SigintFlag,
    _write_outputs,
    lr_at,
    restore,
    torch_threads,
)

# fields every run of one batch shares (the rest -- seed, init, init_std, lambdas, lr, momentum, counts of one
# N, stop_rel_gap, gradient -- may differ per run)
SHARED = ("widths", "bias", "loss", "optimizer", "steps", "schedule", "milestones", "gamma", "dtype", "device",
          "snapshot_every", "checkpoint_every")
METHODS = ("auto", "direct", "reduced")
ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-8)  # torch.optim.Adam's defaults, as Trainer builds it


def lerp_coefficients(lr: float, mu: float, lam: float) -> tuple[float, float, float, float] | None:
    """(c, beta, scale, w) of the two-pass heavy ball (:meth:`BatchUFM._sgd_lerp`), or None where it does not
    apply: no momentum, complex roots (large lr * lam with mu near 1), or a root so large that restoring
    buf = c (u - p) would lose more than a few bits (mu < 0.1).

    c is the root of lr mu c^2 + (1 - mu - lr lam) c + lam = 0 of larger magnitude (about -(1 - mu) / (lr mu);
    it exists for lam = 0, the bias, too)."""
    if not (mu > 0 and lr > 0 and lam >= 0):
        return None
    a, b = lr * mu, 1.0 - mu - lr * lam
    disc = b * b - 4.0 * a * lam
    if disc < 0 or b <= 0:
        return None
    c = (-b - math.sqrt(disc)) / (2.0 * a)
    if not (-10.0 <= c * lr < 0):
        return None
    k = 1.0 - c * lr
    return c, k * mu, k / c, -c * lr / k


def hyper_key(cfg: SimulateConfig) -> tuple:
    """lr, momentum and lambdas: simulate_batch sorts a batch's runs by them (equal ones side by side)."""
    p = cfg.problem
    return cfg.lr, cfg.momentum, tuple(p.lambda_w), p.lambda_h


def batch_key(cfg: SimulateConfig) -> tuple:
    """Runs with equal keys can share one batch."""
    return tuple(getattr(cfg, f) for f in SHARED) + (len(cfg.counts), sum(cfg.counts))


# ---------------------------------------------------------------------------------------------- the engine
class BatchUFM:
    """B deep linear UFMs of one shape: parameters, gradient and optimizer state as (B, ...) tensors.

    ``blocks`` lists the parameter tensors in a parameter-major flat buffer (each block contiguous, so every
    batched matmul sees plain (B, r, c) operands): W_1..W_M, then H (direct) or [A | P] (reduced), then b.
    """

    def __init__(self, trainers: Sequence[Trainer], method: str = "auto"):
        cfg0 = trainers[0].cfg
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "auto":
            method = "reduced" if (cfg0.loss == "mse" and cfg0.optimizer == "sgd") else "direct"
        if method == "reduced" and (cfg0.loss != "mse" or cfg0.optimizer != "sgd"):
            raise ValueError("the reduced formulation needs loss='mse' and optimizer='sgd'")
        self.method = method
        m0 = trainers[0].model
        self.dtype, self.device = m0.dtype, m0.device
        kw = dict(dtype=self.dtype, device=self.device)
        self.cfgs = [t.cfg for t in trainers]
        p0 = trainers[0].problem  # not cfg0.problem: built again under torch_threads, whose flushed denormals
        # read a subnormal lambda (1e-320, accepted) as 0
        self.K, self.N, self.M, self.bias = p0.K, p0.N, p0.M, p0.bias
        self.dims = list(p0.widths) + [p0.K]
        self.B = len(trainers)
        probs = [t.problem for t in trainers]
        counts = torch.tensor([list(p.counts) for p in probs], **kw)  # (B, K)
        self.counts = counts
        labels = torch.stack([t.model.labels for t in trainers])  # (B, N)
        self.Y = torch.nn.functional.one_hot(labels, self.K).transpose(1, 2).to(self.dtype).contiguous()  # (B,K,N)
        self.lam_w = torch.tensor([list(p.lambda_w) for p in probs], **kw)  # (B, M)
        self.lam_h = torch.tensor([p.lambda_h for p in probs], **kw)
        self.lr = torch.tensor([c.lr for c in self.cfgs], **kw)
        self.mom = torch.tensor([c.momentum for c in self.cfgs], **kw)
        self.inv_n = 1.0 / self.N
        # parameters and optimizer state from each trainer (fresh or loaded from a checkpoint)
        flats = torch.stack([t.model.flat for t in trainers])  # (B, P) in UFM layout
        bufs = None
        if cfg0.optimizer == "sgd":
            bufs = torch.stack([t.buf for t in trainers])
        ws, H, b = self._split_ufm(flats)
        self.X = None
        if method == "direct":
            blocks = ws + [H] + ([b] if self.bias else [])
        elif (saved := self._saved_states(trainers, flats, bufs)) is not None:
            # every run resumes from a checkpoint of the engine: its exact reduced state, not one derived again from
            # H (another basis, other round-off), so the run continues bitwise as the uninterrupted one did
            self.X = torch.stack([s["X"] for s in saved]).to(**kw)
            blocks = self._joined([torch.stack([s["flat"][k] for s in saved]).to(**kw)
                                   for k in range(len(saved[0]["flat"]))])
            bufs_blocks = self._joined([torch.stack([s["buf"][k] for s in saved]).to(**kw)
                                        for k in range(len(saved[0]["buf"]))])
        else:
            bws, bH, bb = self._split_ufm(bufs)
            A, E = self._class_split(H)
            bA, bE = self._class_split(bH)
            fresh = bool((bE == 0).all())
            X = self._basis(E if fresh else torch.cat([E, bE], dim=1))  # (B, r, N), orthonormal within-class rows
            self.X = X
            P, bP = E @ X.transpose(1, 2), bE @ X.transpose(1, 2)
            blocks = self._joined(ws + [A, P] + ([b] if self.bias else []))
            bufs_blocks = self._joined(bws + [bA, bP] + ([bb] if self.bias else []))
        self._pack(blocks)
        self.t = 0  # Adam's step count
        if cfg0.optimizer == "sgd":
            self.buf = torch.zeros_like(self.flat)
            src_blocks = self._split_blocks_of(bufs) if method == "direct" else bufs_blocks
            for dst, src in zip(self._views(self.buf), src_blocks):
                dst.copy_(src)
        else:  # Adam: exp_avg, exp_avg_sq from each trainer's torch optimizer state (zeros when fresh)
            self.m1 = torch.zeros_like(self.flat)
            self.m2 = torch.zeros_like(self.flat)
            steps = set()
            for i, t in enumerate(trainers):
                st = t.opt.state.get(t.model.flat, {})
                steps.add(int(float(st.get("step", 0))))
                if st:
                    for dst, src in ((self.m1, st["exp_avg"]), (self.m2, st["exp_avg_sq"])):
                        for v, s in zip(self._views(dst), self._split_blocks_of(src[None])):
                            v[i].copy_(s[0])
            if len(steps) != 1:
                raise ValueError(f"runs of one Adam batch must be at one step, got {sorted(steps)}")
            self.t = steps.pop()
        self.grad = torch.zeros_like(self.flat)
        self.decay = self._decay_blocks()
        self._flags()
        self._work()

    def _saved_states(self, trainers, flats: torch.Tensor, bufs: torch.Tensor) -> list | None:
        """Each trainer's saved reduced state (:meth:`run_state`, from its checkpoint) when every run has one of its
        current step, with one basis size and the shapes of this problem, and it reproduces the trainer's
        parameters and momentum (W and b equal, A Y + P X equal to H to round-off); else None (derived again)."""
        saved = [t.reduced_state for t in trainers]
        if any(s is None or s.get("step") != t.step for s, t in zip(saved, trainers)):
            return None
        d, K, M, N = self.dims[0], self.K, self.M, self.N
        r = saved[0]["X"].shape[0]
        want = [(self.dims[j + 1], self.dims[j]) for j in range(M)] + [(d, K), (d, r)] + ([(K,)] if self.bias else [])
        for s in saved:
            if tuple(s["X"].shape) != (r, N) or [tuple(x.shape) for x in s["flat"]] != want \
                    or [tuple(x.shape) for x in s["buf"]] != want:
                return None
        tol = 1e-12 if self.dtype == torch.float64 else 1e-5
        for i, s in enumerate(saved):
            for blocks, state in ((s["flat"], flats[i : i + 1]), (s["buf"], bufs[i : i + 1])):
                ws, H, b = self._split_ufm(state)
                ws, H = [w[0].cpu() for w in ws], H[0].cpu()
                if any(not torch.equal(w, x.to(w.dtype)) for w, x in zip(ws, blocks[:M])):
                    return None
                if b is not None and not torch.equal(b[0].cpu(), blocks[M + 2].to(b.dtype)):
                    return None
                Y, X = self.Y[i].cpu().to(torch.float64), s["X"].to(torch.float64)
                rebuilt = blocks[M].to(torch.float64) @ Y + blocks[M + 1].to(torch.float64) @ X
                H = H.to(torch.float64)
                if float((rebuilt - H).abs().max()) > tol * max(1.0, float(H.abs().max())):
                    return None
        return saved

    def run_state(self, i: int, step: int, flat: torch.Tensor, buf: torch.Tensor) -> dict | None:
        """Run i's reduced state (reduced method, SGD): its basis X (r, N) and the blocks of ``flat`` and ``buf``
        (CPU copies), saved with its checkpoint of ``step``; None for the direct method."""
        if self.method != "reduced" or buf is None:
            return None
        cpu = lambda t: t.detach().to("cpu").clone()  # noqa: E731
        return {"step": step, "X": cpu(self.X[i]), "flat": [cpu(v[i]) for v in self._split_views(flat)],
                "buf": [cpu(v[i]) for v in self._split_views(buf)]}

    def _joined(self, blocks: list) -> list:
        """Blocks [W_1..W_M, A, P, (b)] (each (B, ...)) as the engine keeps them: [W_1..W_M, [A | P], (b)]."""
        M = self.M
        return blocks[:M] + [torch.cat([blocks[M], blocks[M + 1]], dim=2)] + blocks[M + 2:]

    def _split_views(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat state as [W_1..W_M, A, P, (b)] (reduced: A and P are the columns of [A | P])."""
        v = self._views(t)
        if self.method != "reduced":
            return v
        M, K = self.M, self.K
        return v[:M] + [v[M][:, :, :K], v[M][:, :, K:]] + v[M + 1:]

    # ------------------------------------------------------------------ layout
    def _pack(self, blocks) -> None:
        self.shapes = [tuple(b.shape[1:]) for b in blocks]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        total = sum(self.sizes) * self.B
        self.flat = torch.empty(total, dtype=self.dtype, device=self.device)
        for dst, src in zip(self._views(self.flat), blocks):
            dst.copy_(src)

    def _views(self, t: torch.Tensor, B: int | None = None) -> list[torch.Tensor]:
        B = self.B if B is None else B
        out, i = [], 0
        for s, n in zip(self.shapes, self.sizes):
            out.append(t[i : i + n * B].view(B, *s))
            i += n * B
        return out

    def _split_ufm(self, flats: torch.Tensor):
        """(weights, H, bias) of a (B, P) stack in UFM.flat layout."""
        out, i = [], 0
        d, N, K, M = self.dims[0], self.N, self.K, self.M
        shapes = [(self.dims[j + 1], self.dims[j]) for j in range(M)] + [(d, N)] + ([(K,)] if self.bias else [])
        for s in shapes:
            n = int(np.prod(s))
            out.append(flats[:, i : i + n].reshape(flats.shape[0], *s))
            i += n
        return out[:M], out[M], (out[M + 1] if self.bias else None)

    def _split_blocks_of(self, flats: torch.Tensor):
        """Direct method: the blocks of a (B, P) UFM-layout stack."""
        ws, H, b = self._split_ufm(flats)
        return ws + [H] + ([b] if self.bias else [])

    def _class_split(self, H: torch.Tensor):
        """H = A Y + E: class means A (B, d, K) and the within-class part E (B, d, N)."""
        A = (H @ self.Y.transpose(1, 2)) / self.counts[:, None, :]
        return A, H - A @ self.Y

    def _basis(self, E: torch.Tensor) -> torch.Tensor:
        """Orthonormal rows (B, r, N) spanning every row of E (B, rows, N), each orthogonal to the class
        indicators (within-class), r = min(rows, N - K)."""
        rows, r = E.shape[1], min(E.shape[1], self.N - self.K)
        E = E.to(torch.float64)
        if rows <= r:  # QR: the Q columns span E's rows (all of them, whatever E's rank)
            V = torch.linalg.qr(E.transpose(1, 2))[0].transpose(1, 2)
        else:  # more rows than within-class dimensions: the leading right singular vectors
            V = torch.linalg.svd(E, full_matrices=False)[2][:, :r, :]
        # re-centre per class (directions of a rank-deficient E need not be within-class) and re-orthonormalize;
        # the directions of E's rows are unchanged up to round-off
        Y = self.Y.to(torch.float64)
        cnt = self.counts.to(torch.float64)
        V = V - ((V @ Y.transpose(1, 2)) / cnt[:, None, :]) @ Y
        q, _ = torch.linalg.qr(V.transpose(1, 2))
        return q.transpose(1, 2).to(self.dtype).contiguous()

    def _decay_blocks(self):
        """Per block: the decay of each run as a (B, 1, 1) tensor (None for the bias)."""
        out = [self.lam_w[:, j, None, None] for j in range(self.M)]
        out.append(self.lam_h[:, None, None])  # H, or [A | P]
        if self.bias:
            out.append(None)
        return out

    def _work(self) -> None:
        kw = dict(dtype=self.dtype, device=self.device)
        B, K, M, dims = self.B, self.K, self.M, self.dims
        self.pv, self.gv = self._views(self.flat), self._views(self.grad)
        self.bv = self._views(self.buf) if hasattr(self, "buf") else None
        self.Q = [torch.empty(B, K, dims[j], **kw) for j in range(M - 1)] + [self.pv[M - 1]]
        self.R = [torch.empty(B, K, dims[j], **kw) for j in range(M)]
        if self.method == "direct":
            self.Z = torch.empty(B, K, self.N, **kw)
        else:
            c = K + self.X.shape[1]
            self.Z = torch.empty(B, K, c, **kw)  # Q0 [A | P] - [I | 0] (+ b): [Gm | QP]
            self.ZD = torch.empty(B, K, c, **kw)  # Z diag(n_1..n_K, 1..1) / N
            self.cn = torch.cat([self.counts, torch.ones(B, c - K, **kw)], 1)[:, None, :] * self.inv_n
            self.neg_eye = torch.zeros(B, K, c, **kw)
            self.neg_eye[:, :, :K] -= torch.eye(K, **kw)
        self.chunks = self._chunks()

    # cache blocking: SGD steps sweep the batch in chunks whose parameters, gradient and momentum (3x the
    # parameters) fit in about this many bytes, each chunk taking all steps up to the next snapshot while its
    # state stays in the CPU's cache (the whole batch, e.g. 64 paper runs = 20 MB, streams from memory each step)
    CHUNK_BYTES = 2 << 20
    chunk = 0  # runs per chunk (0: from CHUNK_BYTES)

    def _chunks(self) -> list:
        """Shallow copies of this engine over consecutive runs (every per-run tensor a view, no copies).

        Chunks also end where the runs' lr, momentum or lambdas change (simulate_batch sorts a batch's runs by
        them), unless that makes many more chunks: a chunk of equal hyperparameters takes the two-pass momentum
        update (:meth:`_sgd`), a mixed one three passes."""
        per_run = 3 * sum(self.sizes) * self.flat.element_size()
        size = self.chunk or max(1, self.CHUNK_BYTES // per_run)
        if self.device.type != "cpu":
            return [self]
        spans = [(s, min(self.B, s + size)) for s in range(0, self.B, size)]
        groups = self._equal_spans()
        if len(groups) > 1:
            split = [(a, min(e, a + size)) for s, e in groups for a in range(s, e, size)]
            if len(split) <= 1.5 * len(spans) + 1:
                spans = split
        if len(spans) == 1:
            return [self]
        out = []
        for s, e in spans:
            c = copy.copy(self)
            c.B = e - s
            for name in ("pv", "gv", "bv", "Q", "R", "decay"):
                v = getattr(self, name)
                setattr(c, name, None if v is None else [None if t is None else t[s:e] for t in v])
            for name in ("Z", "ZD", "cn", "neg_eye", "Y", "counts", "lam_w", "lam_h", "lr", "mom", "X"):
                v = getattr(self, name, None)
                if v is not None:
                    setattr(c, name, v[s:e])
            c._flags()
            out.append(c)
        return out

    def _equal_spans(self) -> list[tuple[int, int]]:
        """Maximal spans of consecutive runs with equal lr, momentum and lambdas."""
        keys = torch.cat([self.lr[:, None], self.mom[:, None], self.lam_w, self.lam_h[:, None]], 1).tolist()
        spans, start = [], 0
        for i in range(1, self.B + 1):
            if i == self.B or keys[i] != keys[start]:
                spans.append((start, i))
                start = i
        return spans

    def _flags(self) -> None:
        """Whether this engine's (or chunk's) runs share lr and momentum (uniform) and every lambda (lam_uniform)."""
        self.uniform = bool((self.lr == self.lr[0]).all()) and bool((self.mom == self.mom[0]).all())
        self.lam_uniform = bool((self.lam_w == self.lam_w[0]).all()) and bool((self.lam_h == self.lam_h[0]).all())

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the runs ``keep`` (indices into the current batch), in that order."""
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=self.device)
        B_new = len(keep)

        def take(t):
            return [v.index_select(0, idx) for v in self._views(t)]

        def repack(t):
            out = torch.empty(sum(self.sizes) * B_new, dtype=self.dtype, device=self.device)
            for dst, src in zip(self._views(out, B_new), take(t)):
                dst.copy_(src)
            return out

        self.flat = repack(self.flat)
        for name in ("buf", "m1", "m2"):
            if hasattr(self, name):
                setattr(self, name, repack(getattr(self, name)))
        for name in ("counts", "Y", "lam_w", "lam_h", "lr", "mom", "X"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v.index_select(0, idx))
        self.cfgs = [self.cfgs[i] for i in keep]
        self.B = B_new
        self.grad = torch.zeros_like(self.flat)
        self.decay = self._decay_blocks()
        self._flags()
        self._work()

    # ------------------------------------------------------------------ gradient
    def _decayed(self, out, param, lam_col, lam_vec, a, b, alpha=1.0):
        """out = lam * param + alpha * a @ b per run."""
        if self.lam_uniform:
            torch.baddbmm(param, a, b, beta=float(lam_vec[0]), alpha=alpha, out=out)
        else:
            torch.bmm(a, b, out=out)
            if alpha != 1.0:
                out.mul_(alpha)
            out.addcmul_(param, lam_col)

    def _emit(self, out, param, k, lam_vec, a, b, alpha=1.0, mu=None):
        """out = lam * param + alpha * a @ b per run (block k); with ``mu``: out = mu * out + that (SGD's momentum
        buffer takes the gradient straight from the GEMM: no gradient tensor, one pass fewer over the block); with
        ``mu`` a list of (beta, scale) per block: out = beta * out + scale * alpha * a @ b, no decay term (the
        reparametrized momentum of :meth:`_sgd_lerp` holds it)."""
        if mu is None:
            self._decayed(out, param, self.decay[k], lam_vec, a, b, alpha)
            return
        if isinstance(mu, list):
            beta, scale = mu[k]
            out.baddbmm_(a, b, beta=beta, alpha=alpha * scale)
            return
        out.baddbmm_(a, b, beta=mu, alpha=alpha)
        if self.lam_uniform:
            out.add_(param, alpha=float(lam_vec[0]))
        else:
            out.addcmul_(param, self.decay[k])

    def gradient_(self, mu: float | list | None = None) -> None:
        """The gradient of every run into ``grad``; with ``mu``: buf = mu * buf + gradient instead; with a list of
        (beta, scale) per block: buf = beta * buf + scale * (gradient without its decay term)."""
        M, Ws, Q, R, inv_n = self.M, self.pv[: self.M], self.Q, self.R, self.inv_n
        gv = self.gv if mu is None else self.bv
        for j in range(M - 2, -1, -1):
            torch.bmm(Q[j + 1], Ws[j], out=Q[j])
        Q0 = Q[0]
        gW = gv[:M]
        b = self.pv[-1] if self.bias else None
        if self.method == "direct":
            H, Z = self.pv[M], self.Z
            if b is None:
                torch.bmm(Q0, H, out=Z)
            else:
                torch.baddbmm(b[:, :, None], Q0, H, out=Z)
            if self.cfgs[0].loss == "mse":
                Z.sub_(self.Y)  # G = N dL/dZ
            else:
                logp = torch.log_softmax(Z, dim=1)
                torch.exp(logp, out=Z)
                Z.sub_(self.Y)
            G = Z
            torch.bmm(G, H.transpose(1, 2), out=R[0])
            R[0].mul_(inv_n)
            self._emit(gv[M], H, M, self.lam_h, Q0.transpose(1, 2), G, inv_n, mu)
            if b is not None:
                if mu is None:
                    torch.sum(G, dim=2, out=gv[M + 1])
                    gv[M + 1].mul_(inv_n)
                elif isinstance(mu, list):
                    gv[M + 1].mul_(mu[M + 1][0]).add_(G.sum(dim=2), alpha=inv_n * mu[M + 1][1])
                else:
                    gv[M + 1].mul_(mu).add_(G.sum(dim=2), alpha=inv_n)
        else:
            AP, Z, ZD, K = self.pv[M], self.Z, self.ZD, self.K
            torch.baddbmm(self.neg_eye, Q0, AP, out=Z)  # [Q0 A - I | Q0 P]
            if b is not None:
                Z[:, :, :K].add_(b[:, :, None])
            torch.mul(Z, self.cn, out=ZD)
            torch.bmm(ZD, AP.transpose(1, 2), out=R[0])  # G H^T / N
            self._emit(gv[M], AP, M, self.lam_h, Q0.transpose(1, 2), Z, inv_n, mu)
            if b is not None:
                gb = torch.bmm(Z[:, :, :K], self.counts[:, :, None])[:, :, 0]
                if mu is None:
                    torch.mul(gb, inv_n, out=gv[M + 1])
                elif isinstance(mu, list):
                    gv[M + 1].mul_(mu[M + 1][0]).add_(gb, alpha=inv_n * mu[M + 1][1])
                else:
                    gv[M + 1].mul_(mu).add_(gb, alpha=inv_n)
        for j in range(1, M):
            torch.bmm(R[j - 1], Ws[j - 1].transpose(1, 2), out=R[j])
        for j in range(M - 1):
            self._emit(gW[j], Ws[j], j, self.lam_w[:, j], Q[j + 1].transpose(1, 2), R[j], 1.0, mu)
        if isinstance(mu, list):
            beta, scale = mu[M - 1]
            gW[M - 1].mul_(beta).add_(R[M - 1], alpha=scale)
        elif mu is not None:
            gW[M - 1].mul_(mu).add_(R[M - 1])
            if self.lam_uniform:
                gW[M - 1].add_(Ws[M - 1], alpha=float(self.lam_w[0, M - 1]))
            else:
                gW[M - 1].addcmul_(Ws[M - 1], self.decay[M - 1])
        elif self.lam_uniform:
            torch.add(R[M - 1], Ws[M - 1], alpha=float(self.lam_w[0, M - 1]), out=gW[M - 1])
        else:
            torch.addcmul(R[M - 1], Ws[M - 1], self.decay[M - 1], out=gW[M - 1])

    # ------------------------------------------------------------------ optimizer steps
    def advance(self, n: int, step: int, factor: Callable[[int], float] | None) -> None:
        """n optimizer steps from ``step``; ``factor(s)`` the schedule's lr multiplier (None: constant)."""
        cfg = self.cfgs[0]
        if cfg.optimizer == "sgd":
            for c in self.chunks:
                c._sgd(n, step, factor, whole=c is self)
            return
        self._adam(n, step, factor)

    def _sgd(self, n: int, step: int, factor: Callable[[int], float] | None, whole: bool) -> None:
        """n SGD steps of the runs of this engine (or chunk); ``whole``: the update runs over the flat buffers."""
        # float64 only: beta = (1 - c lr) mu is 1 - O(lr lambda / (1 - mu)), and rounded to float32 it shifts the
        # decay by ~eps32 / (1 - beta) relative (test_batched_review's test_float32_two_pass_as_accurate_as_one_run)
        if factor is None and self.uniform and self.lam_uniform and self.dtype == torch.float64:
            coef = [lerp_coefficients(float(self.lr[0]), float(self.mom[0]), lam) for lam in self._block_lambdas()]
            if all(c is not None for c in coef):
                self._sgd_lerp(n, coef, whole)
                return
        if self.uniform:  # buf = mu buf + gradient (from the GEMMs), p -= lr buf
            mu, lr = float(self.mom[0]), float(self.lr[0])
            pairs = [(self.buf, self.flat)] if whole else list(zip(self.bv, self.pv))

            def update(i):
                a = -(lr if factor is None else lr * factor(step + i))
                for b, p in pairs:
                    p.add_(b, alpha=a)

            if self.method == "reduced":  # decay per block: a float, or per run; none for the bias
                decay = [None if d is None else (lam if self.lam_uniform else d)
                         for lam, d in zip(self._block_lambdas(), self.decay)]
                self._reduced_steps(n, [(mu, 1.0, d) for d in decay], update)
                return
            for i in range(n):
                self.gradient_(mu)
                update(i)
            return
        bv, gv, pv = self.bv, self.gv, self.pv
        mu = self.mom.view(-1, 1, 1)
        neg = -self.lr.view(-1, 1, 1)
        shaped = [(mu if len(s) == 2 else mu[:, :, 0]) for s in self.shapes]
        for i in range(n):
            self.gradient_()
            lr_i = neg if factor is None else neg * factor(step + i)
            for k, s in enumerate(self.shapes):
                m_k, l_k = (shaped[k], lr_i) if len(s) == 2 else (shaped[k], lr_i[:, :, 0])
                torch.addcmul(gv[k], bv[k], m_k, out=bv[k])
                pv[k].addcmul_(bv[k], l_k)

    def _block_lambdas(self) -> list[float]:
        """The decay of each parameter block (this engine's runs share them): lambda_W per layer, lambda_H for H
        (or [A | P]), 0 for the bias."""
        lam = [float(self.lam_w[0, j]) for j in range(self.M)] + [float(self.lam_h[0])]  # W_j, then H or [A | P]
        return lam + ([0.0] if self.bias else [])

    def _sgd_lerp(self, n: int, coef: list, whole: bool) -> None:
        """n steps of SGD with momentum and weight decay in two passes over each block instead of three.

        The heavy ball buf' = mu buf + lam p + g, p' = p - lr buf' is linear in (p, buf) apart from the data
        gradient g. With u = p + buf / c, c a root of lr mu c^2 + (1 - mu - lr lam) c + lam = 0
        (:func:`lerp_coefficients`), the decay term drops out of the recursion:
            u' = beta u + scale g,   p' = p + w (u' - p)  (torch.lerp),
        beta = (1 - c lr) mu, scale = (1 - c lr) / c, w = -c lr / (1 - c lr): the GEMMs accumulate g straight
        into u and one lerp updates p. The same iterates up to round-off; buf is restored after the n steps (or
        an interrupt), so checkpoints and the rest of the engine see the usual momentum buffer."""
        bv, pv = self.bv, self.pv
        moms = [(beta, scale) for _, beta, scale, _ in coef]
        for (c, *_), b, p in zip(coef, bv, pv):
            b.div_(c).add_(p)  # u = p + buf / c, in the momentum buffer
        same_w = len({w for *_, w in coef}) == 1
        pairs = [(self.buf, self.flat, coef[0][3])] if whole and same_w else \
            [(b, p, w) for (*_, w), b, p in zip(coef, bv, pv)]
        try:
            if self.method == "reduced":
                self._reduced_steps(n, [(beta, scale, None) for beta, scale in moms],
                                    [partial(p.lerp_, u, w) for u, p, w in pairs])
            else:
                for _ in range(n):
                    self.gradient_(moms)
                    for u, p, w in pairs:
                        p.lerp_(u, w)
        finally:
            for (c, *_), b, p in zip(coef, bv, pv):
                b.sub_(p).mul_(c)  # buf = c (u - p)

    def _reduced_steps(self, n: int, moms: list, update: Callable[[int], None] | list) -> None:
        """n SGD steps of the reduced form, buf = beta buf + scale (gradient without decay) [+ decay param] per block
        (``moms``: (beta, scale, decay) per block, decay None, a float or a (B, 1, 1) tensor), then ``update(i)``
        moves the parameters (a lerp or p -= lr buf; a list of zero-argument ops when it is the same every step).
        :meth:`gradient_`'s products as a list of bound ops (views, transposes and coefficients bound once),
        -[I | 0] folded into Z's GEMM, diag(n_k, 1)/N into ZD, and W_M's gradient
        accumulated by its GEMM (R_M = R_{M-1} W_{M-1}^T is not formed; at M = 1 neither is R_1): per step one
        GEMM gives [Q0 A - I | Q0 P], one updates [A | P], one mul scales the columns, one forms G H^T / N (M = 1:
        accumulates W's gradient), then the chain: 10 ops and the update at M = 3 where separate A and P took 13
        (the small ops' overhead is most of a chunk's step)."""
        M, K = self.M, self.K
        Ws, uW = self.pv[:M], self.bv[:M]
        WsT = [w.transpose(1, 2) for w in Ws]
        AP, uAP = self.pv[M], self.bv[M]
        APT = AP.transpose(1, 2)
        Q, R, Z, ZD, cn, neg_eye = self.Q, self.R, self.Z, self.ZD, self.cn, self.neg_eye
        Q0, Q0T = Q[0], Q[0].transpose(1, 2)
        QT = [q.transpose(1, 2) for q in Q]
        inv_n = self.inv_n
        b = self.pv[M + 1] if self.bias else None
        ub = self.bv[M + 1] if self.bias else None
        Zb = Z[:, :, :K] if self.bias else None
        ZDb = ZD[:, :, :K] if self.bias else None
        params = Ws + [AP]

        # the step as a list of bound ops (small ops: Python time per op counts), in gradient_'s order
        ops: list[Callable[[], object]] = []

        def decay(k):  # buf += lambda param (the three-pass update; the two-pass one has no decay term)
            d = moms[k][2]
            if isinstance(d, torch.Tensor):
                ops.append(partial(self.bv[k].addcmul_, params[k], d))
            elif d is not None:
                ops.append(partial(self.bv[k].add_, params[k], alpha=d))

        for j in range(M - 2, -1, -1):
            ops.append(partial(torch.bmm, Q[j + 1], Ws[j], out=Q[j]))
        ops.append(partial(torch.baddbmm, neg_eye, Q0, AP, out=Z))  # [Q0 A - I | Q0 P]
        if b is not None:
            ops.append(partial(Zb.add_, b[:, :, None]))
        ops.append(partial(torch.mul, Z, cn, out=ZD))
        if M >= 2:
            ops.append(partial(torch.bmm, ZD, APT, out=R[0]))  # G H^T / N = (Gm D A^T + QP P^T) / N
        beta_h, scale_h, _ = moms[M]
        ops.append(partial(uAP.baddbmm_, Q0T, Z, beta=beta_h, alpha=inv_n * scale_h))
        decay(M)
        if ub is not None:
            beta_b, scale_b, _ = moms[M + 1]
            ops.append(lambda: ub.mul_(beta_b).add_(ZDb.sum(2), alpha=scale_b))
        for j in range(M - 1):
            beta, scale, _ = moms[j]
            ops.append(partial(uW[j].baddbmm_, QT[j + 1], R[j], beta=beta, alpha=scale))
            decay(j)
            if j + 1 < M - 1:
                ops.append(partial(torch.bmm, R[j], WsT[j], out=R[j + 1]))
        beta, scale, _ = moms[M - 1]
        if M >= 2:
            ops.append(partial(uW[M - 1].baddbmm_, R[M - 2], WsT[M - 2], beta=beta, alpha=scale))
        else:  # M = 1: W's gradient is G H^T / N itself, accumulated by its GEMM (no R_1 formed)
            ops.append(partial(uW[0].baddbmm_, ZD, APT, beta=beta, alpha=scale))
        decay(M - 1)
        if not callable(update):  # the same update every step: part of the program
            ops += list(update)
            for _ in range(n):
                for op in ops:
                    op()
            return
        for i in range(n):
            for op in ops:
                op()
            update(i)

    def _adam(self, n: int, step: int, factor: Callable[[int], float] | None) -> None:
        b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
        m1, m2, flat, grad = self.m1, self.m2, self.flat, self.grad
        den = torch.empty_like(flat)
        mv, dv, pv = self._views(m1), self._views(den), self.pv
        for i in range(n):
            self.gradient_()
            self.t += 1
            m1.lerp_(grad, 1 - b1)
            m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
            torch.sqrt(m2, out=den)
            den.div_(math.sqrt(bc2)).add_(eps)
            f = 1.0 if factor is None else factor(step + i)
            if self.uniform:
                flat.addcdiv_(m1, den, value=-float(self.lr[0]) * f / bc1)
            else:
                ss = (-self.lr * (f / bc1)).view(-1, 1, 1)
                for k, s in enumerate(self.shapes):
                    pv[k].addcdiv_(mv[k] * (ss if len(s) == 2 else ss[:, :, 0]), dv[k])

    # ------------------------------------------------------------------ exports
    def state(self) -> dict:
        """A copy of the parameters and optimizer state (to restore a run's last good snapshot)."""
        out = {"flat": self.flat.clone(), "t": self.t}
        for name in ("buf", "m1", "m2"):
            if hasattr(self, name):
                out[name] = getattr(self, name).clone()
        return out

    def ufm_params(self, flat: torch.Tensor | None = None):
        """(weights, H, bias) as (B, ...) tensors in the model's dtype (H formed for the reduced method)."""
        v = self._views(self.flat if flat is None else flat)
        M = self.M
        ws = v[:M]
        if self.method == "direct":
            H = v[M]
        else:
            K = self.K
            H = v[M][:, :, :K] @ self.Y + v[M][:, :, K:] @ self.X
        return ws, H, (v[-1] if self.bias else None)

    def ufm_flat(self, i: int, flat: torch.Tensor | None = None) -> torch.Tensor:
        """Run i's parameters (or any state with the flat layout: buffers too) in UFM.flat layout, (P,)."""
        v = self._views(self.flat if flat is None else flat)
        M = self.M
        parts = [w[i].reshape(-1) for w in v[:M]]
        if self.method == "direct":
            parts.append(v[M][i].reshape(-1))
        else:
            K = self.K
            parts.append((v[M][i][:, :K] @ self.Y[i] + v[M][i][:, K:] @ self.X[i]).reshape(-1))
        if self.bias:
            parts.append(v[-1][i])
        return torch.cat(parts)

    def stats(self):
        """Sufficient statistics of a snapshot, float64 numpy over the run axis: weights, means (B, K, d),
        within-class scatter sum (B, d, d), H H^T, objective, decay terms, bias."""
        f64 = torch.float64
        M, v = self.M, [t.to(f64) for t in self.pv]
        ws = v[:M]
        b = v[-1] if self.bias else None
        Y = self.Y.to(f64)
        cnt = self.counts.to(f64)
        Q0 = ws[-1]
        for w in reversed(ws[:-1]):
            Q0 = Q0 @ w
        lam_w, lam_h = self.lam_w.to(f64), self.lam_h.to(f64)
        reg_w = 0.5 * sum(lam_w[:, j] * (ws[j] * ws[j]).sum(dim=(1, 2)) for j in range(M))
        if self.method == "direct":
            H = v[M]
            A = (H @ Y.transpose(1, 2)) / cnt[:, None, :]
            E = H - A @ Y
            scatter = E @ E.transpose(1, 2)
            hht = H @ H.transpose(1, 2)
            h2 = (H * H).sum(dim=(1, 2))
            Z = Q0 @ H
            if b is not None:
                Z = Z + b[:, :, None]
            if self.cfgs[0].loss == "mse":
                data = 0.5 * self.inv_n * ((Z - Y) ** 2).sum(dim=(1, 2))
            else:
                data = -self.inv_n * (torch.log_softmax(Z, dim=1) * Y).sum(dim=(1, 2))
        else:
            A, P = v[M][:, :, : self.K], v[M][:, :, self.K :]
            scatter = P @ P.transpose(1, 2)
            AD = A * cnt[:, None, :]
            hht = AD @ A.transpose(1, 2) + scatter
            h2 = (AD * A).sum(dim=(1, 2)) + (P * P).sum(dim=(1, 2))
            Gm = Q0 @ A - torch.eye(self.K, dtype=f64, device=A.device)
            if b is not None:
                Gm = Gm + b[:, :, None]
            QP = Q0 @ P
            data = 0.5 * self.inv_n * ((Gm * Gm * cnt[:, None, :]).sum(dim=(1, 2)) + (QP * QP).sum(dim=(1, 2)))
        reg = reg_w + 0.5 * lam_h * h2
        f = data + reg
        cpu = lambda t: None if t is None else t.detach().cpu().numpy()  # noqa: E731
        return ([cpu(w) for w in ws], cpu(A.transpose(1, 2)), cpu(scatter), cpu(hht), cpu(f), cpu(reg), cpu(b))


# ---------------------------------------------------------------------------------------------- runs
class _Run:
    """Book-keeping of one run of a batch: its trainer (config, prediction, folder, rows), status, timings."""

    def __init__(self, index, trainer, store, done=None):
        self.index, self.trainer, self.store, self.done = index, trainer, store, done


def _lr_factor(cfg: SimulateConfig):
    if cfg.schedule == "constant":
        return None
    unit = dataclasses.replace(cfg, lr=1.0)
    return lambda step: lr_at(unit, step)


def _snapshot_rows(engine: BatchUFM, bsnap: BatchSnapshotter, runs: list[_Run], step: int) -> list[dict]:
    ws, means, scatter, hht, f, reg, b = engine.stats()
    # extreme parameters or predicted Grams (lambda ~1e-300): the overflow-proof per-run Snapshotter; a non-finite
    # objective: the 4-column row, as Snapshotter's
    bad = (unsafe(*ws, means, b) | bsnap.unsafe_targets) & np.isfinite(f)
    skip = bad | ~np.isfinite(f)
    if skip.any():  # keep non-finite or extreme runs out of the batched linear algebra
        z = lambda a: None if a is None else np.where(skip.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a)  # noqa: E731
        ws, means, scatter, hht, b = [z(w) for w in ws], z(means), z(scatter), z(hht), z(b)
    rows = bsnap.rows(ws, means, scatter, hht, f, reg, b)
    if bad.any():  # extreme values: the per-run, overflow-proof Snapshotter
        wi, Hi, bi = engine.ufm_params()
        for i in np.flatnonzero(bad):
            rows[i] = runs[i].trainer.snapshotter([w[i] for w in wi], Hi[i], None if bi is None else bi[i])
    out = []
    for r, row in zip(runs, rows):
        full = {"step": step, "lr": lr_at(r.trainer.cfg, max(step - 1, 0))}
        full.update(row)
        out.append(full)
    return out


def _load_into(trainer: Trainer, engine: BatchUFM, i: int, step: int, state: dict | None = None,
               params: dict | None = None) -> None:
    """Put run i's state into its Trainer (UFM layout): the optimizer state from ``state`` (default the engine's
    current one), the parameters from ``params`` (default ``state``), as the run's ``last_good`` too."""
    st = state if state is not None else {"flat": engine.flat, "t": engine.t,
                                          **{k: getattr(engine, k) for k in ("buf", "m1", "m2") if hasattr(engine, k)}}
    trainer.model.flat.copy_(engine.ufm_flat(i, (params or st)["flat"]))
    trainer.last_good.copy_(trainer.model.flat)
    trainer.step = trainer.last_good_step = step
    trainer.reduced_state = engine.run_state(i, step, (params or st)["flat"], st.get("buf"))
    if trainer.buf is not None:
        trainer.buf.copy_(engine.ufm_flat(i, st["buf"]))
    elif trainer.cfg.optimizer == "adam" and st["t"] > 0:
        trainer.opt.state[trainer.model.flat] = {
            "step": torch.tensor(float(st["t"])),
            "exp_avg": engine.ufm_flat(i, st["m1"]).clone(),
            "exp_avg_sq": engine.ufm_flat(i, st["m2"]).clone(),
        }
        trainer.opt.param_groups[0]["lr"] = lr_at(trainer.cfg, max(step - 1, 0))


def _train_group(runs: list[_Run], method: str, progress: bool, callback) -> None:
    """Train runs that share a batch key and a current step, to the end (or stop/divergence/interrupt)."""
    trainers = [r.trainer for r in runs]
    cfg = trainers[0].cfg
    every = cfg.snapshot_every
    schedule = CheckpointSchedule(cfg)
    factor = _lr_factor(cfg)
    with torch_threads(_threads(cfg, len(runs))), torch.no_grad():
        engine = BatchUFM(trainers, method=method)
    bsnap = BatchSnapshotter([t.snapshotter for t in trainers])
    active = list(runs)
    step = trainers[0].step
    last_good, good_step = engine.state(), step
    synced = True  # the engine's state is the one at ``step``
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, leave=True,
                   desc=f"{len(runs)} run{'s' if len(runs) > 1 else ''}", position=_BAR_POSITION)

    def record(rows, t_snap):
        """Store each active run's row, in input order; returns the indices (into ``active``, in its order) of
        the runs that go on."""
        keep = []
        for i in sorted(range(len(active)), key=lambda k: active[k].index):  # the batch is sorted by hyperparameters
            r, row = active[i], rows[i]
            tr = r.trainer
            tr.snapshot_seconds += t_snap / len(active)
            if not math.isfinite(row["objective"]):
                tr.status = "diverged"
                tr.message = (f"diverged: non-finite objective at step {step}; stopped, keeping the last good "
                              f"snapshot (step {tr.last_good_step}). Lower the learning rate (now {tr.cfg.lr:g}).")
                _load_into(tr, engine, i, good_step, params=last_good)  # the current optimizer state, as Trainer
                continue
            tr.rows.append(row)
            tr.step = step
            tr.last_good_step = step
            if r.store is not None:
                r.store.append_rows([row])
            if callback is not None:
                callback(r.index, row)
            if tr.reached_gap():
                _load_into(tr, engine, i, step)
                continue
            keep.append(i)
        return sorted(keep)

    def shrink(keep):
        """Finish the runs not in ``keep``, drop them from the batch; the survivors' state is the last good."""
        nonlocal active, bsnap, last_good, good_step
        if len(keep) < len(active):
            for i in range(len(active)):
                if i not in keep:
                    _finish(active[i])
            if keep:
                engine.select(keep)
                bsnap = bsnap.subset(keep)
            active = [active[i] for i in keep]
        if active:
            last_good, good_step = engine.state(), step

    with torch_threads(_threads(cfg, len(runs))), torch.no_grad(), _SigintFlag() as sigint:
        try:
            if step == 0 and not trainers[0].rows:
                t0 = time.perf_counter()
                rows = _snapshot_rows(engine, bsnap, active, 0)
                shrink(record(rows, time.perf_counter() - t0))
            while active and step < cfg.steps:
                target = min(cfg.steps, (step // every + 1) * every)
                t0 = time.perf_counter()
                synced = False
                engine.advance(target - step, step, factor)
                synced = True
                dt = time.perf_counter() - t0
                for r in active:
                    r.trainer.train_seconds += dt / len(active)
                step = target
                t0 = time.perf_counter()
                rows = _snapshot_rows(engine, bsnap, active, step)
                keep = record(rows, time.perf_counter() - t0)
                if bar is not None:
                    bar.n = step
                    bar.set_postfix(running=len(keep), refresh=False)
                    bar.refresh()
                shrink(keep)
                if schedule.due(step):
                    for i, r in enumerate(active):
                        _load_into(r.trainer, engine, i, step)
                        r.trainer.checkpoint()
                if sigint.set:
                    raise KeyboardInterrupt
        except BaseException as exc:
            # each Trainer takes the state of its last recorded row: the current state if this step's row is
            # recorded, else the last good one (an interrupt mid-way through the rows, a second Ctrl-C mid-steps);
            # Ctrl-C then checkpoints it, any other error (a callback's, a full disk) leaves it for weights.pt
            interrupt = isinstance(exc, KeyboardInterrupt)
            for i, r in enumerate(active):
                tr = r.trainer
                if interrupt and tr.status != "running":  # converged or diverged at this snapshot: finished
                    _finish(r)
                    continue
                if synced and tr.rows and tr.rows[-1]["step"] == step:
                    _load_into(tr, engine, i, step)
                else:
                    _load_into(tr, engine, i, good_step, state=last_good)
                if interrupt:
                    tr.interrupted()
            raise
        finally:
            if bar is not None:
                bar.close()
        for i, r in enumerate(active):
            _load_into(r.trainer, engine, i, step)
            _finish(r)


_BAR_POSITION = None  # a worker process's progress-bar line (nclab.ufm.workers)


def _finish(r: _Run) -> None:
    """A run left the batch: its status, diagnosis and final checkpoint, as Trainer.run ends."""
    r.trainer.finish()
    r.done = True


def _threads(cfg: SimulateConfig, B: int) -> int:
    """Threads for a batch: the single-run rule (:func:`nclab.ufm.trainer.auto_threads`) applied to the work of
    one op, which for CPU SGD spans one cache chunk of runs, not the whole batch (the chunks' small ops are
    overhead-bound, where a second thread only adds synchronization)."""
    from nclab.environment import choose_threads

    K, N, widths = len(cfg.counts), sum(cfg.counts), list(cfg.widths)
    runs = B
    if cfg.optimizer == "sgd" and cfg.device == "cpu":
        params = parameter_count(K, N, widths)
        runs = min(B, max(1, BatchUFM.CHUNK_BYTES // (3 * params * (8 if cfg.dtype == "float64" else 4))))
    return choose_threads(cfg.threads, max(widths) * N * K * runs, small=2_000_000)


# ---------------------------------------------------------------------------------------------- public API
def simulate_batch(
    configs: Sequence[SimulateConfig],
    outs: Sequence | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    predictions: Sequence | None = None,
    progress: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    method: str = "auto",
    max_batch: int = 0,
    workers: int = 0,
) -> list[SimulationResult]:
    """Train many UFM runs, batching those of one shape (see the module docstring); results in input order.

    Parameters
    ----------
    configs : SimulateConfigs (:func:`nclab.ufm.make_config`). Runs sharing :data:`SHARED` fields, K and N are
        trained as one batch; L-BFGS runs go one by one through :func:`nclab.simulate`.
    outs : a run folder per config (each written as :func:`nclab.simulate` writes it), or None: nothing written.
    resume, overwrite : as :func:`nclab.simulate`, per folder (finished runs are loaded, not re-run).
    predictions : precomputed ``nclab.predict`` results per config (else computed, once per distinct problem).
    progress : a progress bar per batch.
    callback : ``callback(index, row)`` after each recorded metrics row of run ``index``.
    method : "auto" (reduced for MSE + SGD, else direct), "direct" or "reduced" (see the module docstring).
    max_batch : at most this many runs per batch (0: no limit).
    workers : processes that share the runs (:mod:`nclab.ufm.workers`): 0 (default) the idle cores when the
        runs take more than ~10 s and no ``callback`` is given, else 1 (this process); 1 this process; N at most
        N. Each worker trains its share as one batch and writes its runs' folders as this process would.

    Returns
    -------
    list of SimulationResult, one per config (``seconds``: the run's share of its batch's training time)
    """
    from nclab import __version__
    from nclab.environment import environment
    from nclab.results import open_run
    from nclab.theory import predict
    from nclab.ufm.trainer import simulate

    configs = list(configs)
    auto_checkpoint_seconds()  # a bad NCLAB_CHECKPOINT_SECONDS is refused before anything is written
    for c in configs:
        if not isinstance(c, SimulateConfig):
            raise ValueError(f"every config must be a SimulateConfig, got {type(c).__name__}")
        if c.activation != "identity":
            raise ValueError(f"batched runs cover the deep linear UFM only, got activation={c.activation!r}; run the "
                             "seeds one by one (nclab simulate --restarts, or nclab.ufm.simulate)")
    if outs is not None:
        outs = list(outs)
        if len(outs) != len(configs):
            raise ValueError(f"{len(outs)} output folders for {len(configs)} configs")
        if len({str(o) for o in outs}) != len(outs):
            raise ValueError("every run needs its own output folder")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    preds: dict = {}
    if predictions is not None:
        predictions = list(predictions)
        if len(predictions) != len(configs):
            raise ValueError(f"{len(predictions)} predictions for {len(configs)} configs")
        for c, p in zip(configs, predictions):
            if p.problem != c.problem:
                raise ValueError("a given prediction is for another problem than its config's")
    from nclab.ufm.workers import plan, run_workers, steps_done

    plans = plan(configs, workers, callback, steps_done(outs, resume) if workers == 0 else None)
    if len(plans) > 1:
        return run_workers(configs, outs, plans, dict(resume=resume, overwrite=overwrite, predictions=predictions,
                                                      progress=progress, method=method, max_batch=max_batch))
    results: list[SimulationResult | None] = [None] * len(configs)
    runs: list[_Run] = []
    try:
        for i, cfg in enumerate(configs):
            if cfg.optimizer == "lbfgs":
                continue
            if predictions is not None:
                pred = predictions[i]
            else:
                key = cfg.problem
                pred = preds.get(key) or preds.setdefault(key, predict(key))
            store = ckpt = None
            if outs is not None:
                store, ckpt, done = open_run(outs[i], cfg.to_dict(), kind=KIND, resume=resume, overwrite=overwrite,
                                             finished=FINISHED, defaults=DEFAULTS)
                if done:
                    results[i] = _result_from_store(cfg, store, pred)
                    store.unlock()
                    continue
            trainer = Trainer(cfg, prediction=pred, store=store)
            if store is not None:
                store.write_config(cfg.to_dict(), kind=KIND, version=__version__)
                env = environment()
                env["threads_used"] = _threads(cfg, 1)
                store.write_environment(env)
                store.write_json("prediction.json", pred.to_dict())
                restore(trainer, store, ckpt)
            runs.append(_Run(i, trainer, store))
        # batches: one shape and one current step each
        groups: dict = {}
        for r in runs:
            groups.setdefault(batch_key(r.trainer.cfg) + (r.trainer.step,), []).append(r)
        try:
            for group in groups.values():
                # a run stopped at the very row that met its stop_rel_gap (before the stop check) ends there,
                # converged, as the uninterrupted run did
                for r in [r for r in group if r.trainer.reached_gap()]:
                    _finish(r)
                    group.remove(r)
                if not group:
                    continue
                # runs of equal lr, momentum and lambdas side by side: the engine's chunks of them take the
                # two-pass update (BatchUFM._chunks); stable, so a batch of equal runs keeps its order
                group.sort(key=lambda r: hyper_key(r.trainer.cfg))
                size = max_batch or len(group)
                for k in range(0, len(group), size):
                    chunk = group[k : k + size]
                    if chunk[0].trainer.step >= chunk[0].trainer.cfg.steps:
                        for r in chunk:
                            _finish(r)
                        continue
                    _train_group(chunk, method, progress, callback)
        finally:
            for r in runs:
                if r.store is not None:
                    _write_outputs(r.trainer, r.store)
        for r in runs:
            tr = r.trainer
            ws, H, b = tr.parameters()
            results[r.index] = SimulationResult(
                config=tr.cfg, run_dir=None if r.store is None else r.store.path, status=tr.status, step=tr.step,
                final=tr.rows[-1] if tr.rows else {}, history=list(tr.rows), prediction=tr.pred, weights=ws, H=H,
                bias=b, seconds=tr.train_seconds, snapshot_seconds=tr.snapshot_seconds, message=tr.message,
                extra={"batched": True})
    finally:
        for r in runs:
            if r.store is not None:
                r.store.unlock()
    for i, cfg in enumerate(configs):  # L-BFGS: one by one
        if cfg.optimizer == "lbfgs":
            results[i] = simulate(cfg, out=None if outs is None else outs[i], resume=resume, overwrite=overwrite,
                                  progress=progress, prediction=None if predictions is None else predictions[i])
    return results


def run_seeds(configs: Sequence[SimulateConfig], seeds: Sequence[int], out, *, resume: bool = False,
              overwrite: bool = False, progress: bool = False, figures: bool = True, title: str = "",
              on_result: Callable | None = None, method: str = "auto", workers: int = 0) -> list[SimulationResult]:
    """Each config once per seed, batched: ``out/seed-S`` (one config) or ``out/depth-M/seed-S`` (several,
    one per depth); figures of each depth's runs in ``out/figures`` or ``out/depth-M/figures``. ``workers``:
    as :func:`simulate_batch`."""
    import pathlib

    out = pathlib.Path(out)
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. 0-63")
    depths = [len(c.widths) for c in configs]
    if len(set(depths)) != len(depths):
        raise ValueError(f"each depth may appear once, got {depths}")
    root = {M: (out if len(configs) == 1 else out / f"depth-{M}") for M in depths}
    cfgs = [dataclasses.replace(c, seed=int(s)) for c in configs for s in seeds]
    dirs = [root[len(c.widths)] / f"seed-{c.seed}" for c in cfgs]
    results = simulate_batch(cfgs, dirs, resume=resume, overwrite=overwrite, progress=progress, method=method,
                             workers=workers)
    for r in results:
        if on_result is not None:
            on_result(r)
    if figures:
        from nclab.report.figures import plot_runs

        for M in depths:
            plot_runs([r.run_dir for r in results if len(r.config.widths) == M], root[M] / "figures", title=title)
    return results
