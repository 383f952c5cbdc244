"""Review probes of the reduced form's joined [A | P] block (nclab.ufm.batched.BatchUFM, method="reduced").

Engine-level checks against independent float64 references: a plain heavy-ball loop with autograd on the full
parameters (W_1..W_M, H, b), autograd gradients, and a plain objective; plus simulate_batch against nclab.simulate
(``compare`` of test_batched) for early stops, divergence, many chunks and a bitwise resume.
"""

from __future__ import annotations

import pytest
import torch

from nclab.results import RunStore
from nclab.ufm import make_config
from nclab.ufm.batched import BatchUFM, _load_into, _lr_factor, simulate_batch
from nclab.ufm.trainer import Trainer, lr_at
from tests.test_batched import compare, run_both

F64 = torch.float64
KW = dict(steps=60, snapshot_every=20, init_std=0.3)


def _reference(cfg, steps):
    """Plain float64 heavy ball (buf = mu buf + g + lambda p, p -= lr(s) buf) with autograd on W_1..W_M, H, b from
    the run's own initialization: (parameters, buffers) flattened in UFM.flat order."""
    t = Trainer(cfg)
    p = cfg.problem
    ws = [w.detach().to(F64).clone().requires_grad_() for w in t.model.weights]
    H = t.model.H.detach().to(F64).clone().requires_grad_()
    b = t.model.bias.detach().to(F64).clone().requires_grad_() if p.bias else None
    Y = torch.nn.functional.one_hot(t.model.labels, p.K).T.to(F64)
    params = ws + [H] + ([b] if b is not None else [])
    lams = list(p.lambda_w) + [p.lambda_h] + ([0.0] if b is not None else [])
    bufs = [torch.zeros_like(x) for x in params]
    for s in range(steps):
        Z = H
        for w in ws:
            Z = w @ Z
        if b is not None:
            Z = Z + b[:, None]
        gs = torch.autograd.grad(0.5 / Y.shape[1] * ((Z - Y) ** 2).sum(), params)
        lr = lr_at(cfg, s)
        with torch.no_grad():
            for x, g, bf, lam in zip(params, gs, bufs, lams):
                bf.mul_(cfg.momentum).add_(g + lam * x)
                x.sub_(lr * bf)
    flat = lambda xs: torch.cat([x.detach().reshape(-1) for x in xs])  # noqa: E731
    return flat(params), flat(bufs)


def _engine(cfgs):
    with torch.no_grad():
        return BatchUFM([Trainer(c) for c in cfgs], method="reduced")


def _advance(e, cfgs, start, stop, every=20):
    factor = _lr_factor(cfgs[0])
    with torch.no_grad():
        for s in range(start, stop, every):
            e.advance(min(every, stop - s), s, factor)


def _rel(a, b):
    return float((a.to(F64) - b).abs().max()) / max(1.0, float(b.abs().max()))


def _cases():
    c = [8, 4, 3]
    return {
        # two-pass lerp, W's gradient from ZD [A | P]^T at M = 1, bias column sums with imbalanced counts
        "M=1 bias imbalanced": ([make_config(c, widths=[5], lambda_w=1e-2, lambda_h=5e-3, bias=True, seed=s, **KW)
                                 for s in range(3)], "lerp"),
        "M=4 unequal widths, per-layer lambdas, bias": (
            [make_config([6, 4, 5], widths=[7, 5, 4, 3], lambda_w=[1e-2, 2e-2, 5e-3, 1e-3], lambda_h=3e-3, bias=True,
                         seed=s, lr=0.05, **KW) for s in range(2)], "lerp"),
        # one lr and momentum, lambdas per run: the fused three-pass steps with (B, 1, 1) decay tensors (one run per
        # chunk: each chunk's lambdas are uniform, the two-pass lerp where its roots are real)
        "lambdas per run": ([make_config(c, widths=[6, 4], lambda_w=[1e-2 * (1 + s), 2e-3], lambda_h=1e-3 * (1 + s),
                                         bias=True, seed=s, lr=0.1, **KW) for s in range(3)],
                            ("fused", {"fused", "lerp"})),
        # lr and momentum per run: gradient_'s general reduced path (three passes; one run per chunk: the lerp)
        "lr and momentum per run, M=1": ([make_config(c, widths=[5], lambda_w=1e-2, lambda_h=1e-3, bias=True, seed=s,
                                                      lr=0.05 * (1 + s), momentum=0.9 - 0.2 * s, **KW)
                                          for s in range(3)], ("general", "lerp")),
        "lr per run, M=3, counts per run": (
            [make_config(cn, widths=[6, 4, 4], lambda_w=1e-2, lambda_h=1e-3, bias=True, seed=s, lr=0.04 * (1 + s),
                         **KW) for s, cn in enumerate([[8, 4, 3], [3, 4, 8], [5, 5, 5]])], ("general", "lerp")),
        # one lambda for every block and no bias: one lerp over the whole flat buffers
        "one lambda, no bias": ([make_config(c, widths=[6, 4], lambda_w=1e-2, lambda_h=1e-2, seed=s, **KW)
                                 for s in range(2)], "lerp"),
        "step schedule": ([make_config(c, widths=[6, 4], lambda_w=1e-2, lambda_h=1e-3, bias=True, seed=s,
                                       schedule="step", milestones=[20, 40], lr=0.2, **KW) for s in range(2)],
                          "fused"),
        "r = N - K = 1 (small basis)": ([make_config([2, 1, 1], widths=[5, 4], lambda_w=1e-2, lambda_h=1e-3,
                                                     bias=True, seed=s, lr=0.1, **KW) for s in range(2)], "lerp"),
        "float32": ([make_config(c, widths=[5], lambda_w=1e-2, lambda_h=5e-3, bias=True, seed=s, dtype="float32",
                                 **KW) for s in range(2)], "fused"),
    }


@pytest.mark.parametrize("chunk", [0, 1])
@pytest.mark.parametrize("case", list(_cases()))
def test_reduced_steps_match_a_plain_heavy_ball(monkeypatch, case, chunk):
    """Every reduced-form update route (two-pass lerp, fused three-pass with float or per-run decay, gradient_'s
    general path), M = 1 / 3 / 4, unequal widths, per-layer lambdas, bias with imbalanced (per-run) counts, an lr
    schedule, a tiny basis, float32, whole-batch or one run per chunk: parameters and momentum (mapped back to
    UFM layout through [A | P]) equal a plain autograd heavy ball on (W, H, b) to round-off; the route is pinned."""
    cfgs, route = _cases()[case]
    monkeypatch.setattr(BatchUFM, "chunk", chunk)
    seen = set()
    real_lerp, real_steps, real_grad = BatchUFM._sgd_lerp, BatchUFM._reduced_steps, BatchUFM.gradient_

    def lerp(self, *a):
        seen.add("lerp")
        return real_lerp(self, *a)

    def steps(self, n, moms, update):
        if any(m[2] is not None for m in moms):
            seen.add("fused")
        return real_steps(self, n, moms, update)

    def grad(self, mu=None):
        seen.add("general")
        return real_grad(self, mu)

    monkeypatch.setattr(BatchUFM, "_sgd_lerp", lerp)
    monkeypatch.setattr(BatchUFM, "_reduced_steps", steps)
    monkeypatch.setattr(BatchUFM, "gradient_", grad)
    e = _engine(cfgs)
    _advance(e, cfgs, 0, 60)
    want = route if isinstance(route, str) else route[chunk]
    assert seen == ({want} if isinstance(want, str) else want)
    tol = 1e-5 if cfgs[0].dtype == "float32" else 1e-12
    for i, c in enumerate(cfgs):
        p, buf = _reference(c, 60)
        assert _rel(e.ufm_flat(i), p) <= tol
        assert _rel(e.ufm_flat(i, e.buf), buf) <= tol * 10


def _autograd(e, i, cfg):
    """Autograd gradient of run i's objective at the engine's (W, H = A Y + P X, b), UFM layout."""
    W, H, b = e.ufm_params()
    ps = [w[i].clone().requires_grad_() for w in W] + [H[i].clone().requires_grad_()]
    if b is not None:
        ps.append(b[i].clone().requires_grad_())
    M, pr = e.M, cfg.problem
    Z = ps[M]
    for w in ps[:M]:
        Z = w @ Z
    if b is not None:
        Z = Z + ps[M + 1][:, None]
    f = 0.5 / e.N * ((Z - e.Y[i]) ** 2).sum() + 0.5 * pr.lambda_h * (ps[M] ** 2).sum()
    f = f + 0.5 * sum(lam * (w ** 2).sum() for lam, w in zip(pr.lambda_w, ps[:M]))
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, ps)])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("widths", [[5], [6, 4], [7, 5, 4, 3]])
def test_gradient_of_the_joined_block_is_autograds(widths, bias):
    """gradient_ (grad and buf = mu buf + grad) with per-run lambdas and counts: grad [A | P] mapped to H
    (gA Y + gP X), the W's and b equal autograd's gradient of the full objective at H = A Y + P X."""
    cfgs = [make_config(cn, widths=widths, lambda_w=1e-2 * (1 + s), lambda_h=2e-3 * (1 + s), bias=bias, seed=s,
                        lr=0.05 * (1 + s), **KW) for s, cn in enumerate([[8, 4, 3], [3, 4, 8], [5, 5, 5]])]
    e = _engine(cfgs)
    _advance(e, cfgs, 0, 10, every=10)
    with torch.no_grad():
        e.gradient_()
    for i, c in enumerate(cfgs):
        assert _rel(e.ufm_flat(i, e.grad), _autograd(e, i, c)) <= 1e-13
    torch.manual_seed(0)
    with torch.no_grad():
        e.buf.normal_()
        old = [e.ufm_flat(i, e.buf) for i in range(3)]
        e.gradient_(0.7)
    for i, c in enumerate(cfgs):
        assert _rel(e.ufm_flat(i, e.buf), 0.7 * old[i] + _autograd(e, i, c)) <= 1e-13


def test_layout_joined_split_and_stats():
    """The engine's blocks are [W_1..W_M, [A | P], b] (_shapes agrees with the packed layout); _split_views gives A
    and P as the column blocks and _joined puts them back bitwise; ufm_params / ufm_flat form H = A Y + P X; stats'
    objective and H H^T equal a plain float64 computation from H."""
    cfgs = [make_config([8, 4, 3], widths=[6, 4], lambda_w=[1e-2, 3e-3], lambda_h=2e-3 * (1 + s), bias=True,
                        seed=s, lr=0.1, **KW) for s in range(3)]
    e = _engine(cfgs)
    _advance(e, cfgs, 0, 30, every=30)
    d, K, r, M = 6, 3, e.X.shape[1], 2
    assert e.shapes == [(4, 6), (3, 4), (d, K + r), (K,)]
    v = e._split_views(e.flat)
    assert [tuple(t.shape[1:]) for t in v] == [(4, 6), (3, 4), (d, K), (d, r), (K,)]
    assert torch.equal(torch.cat([v[M], v[M + 1]], 2), e.pv[M])
    assert all(torch.equal(a, b) for a, b in zip(e._joined(v), e.pv))
    W, H, b = e.ufm_params()
    _, _, _, hht, f, _, _ = e.stats()
    for i, c in enumerate(cfgs):
        Hi = v[M][i] @ e.Y[i] + v[M + 1][i] @ e.X[i]
        assert torch.equal(H[i], Hi)
        assert torch.equal(e.ufm_flat(i), torch.cat([W[0][i].reshape(-1), W[1][i].reshape(-1), Hi.reshape(-1), b[i]]))
        Z = W[1][i] @ W[0][i] @ Hi + b[i][:, None]
        p = c.problem
        obj = 0.5 / e.N * ((Z - e.Y[i]) ** 2).sum() + 0.5 * p.lambda_h * (Hi ** 2).sum()
        obj = obj + 0.5 * sum(lam * (w[i] ** 2).sum() for lam, w in zip(p.lambda_w, W))
        assert abs(f[i] - float(obj)) <= 1e-14 * float(obj)
        assert float((torch.as_tensor(hht[i]) - Hi @ Hi.T).abs().max()) <= 1e-13


@pytest.mark.parametrize("chunk", [0, 1])
def test_select_rebuilds_the_column_scales_and_eye(monkeypatch, chunk):
    """Runs with their own counts (of one N) and lr, some dropped and the rest reordered mid-run: cn (n_k / N on
    the first K columns, 1 / N on P's), neg_eye ([-I | 0]) and every chunk's views follow the kept runs, which end
    as a plain heavy ball from their own start."""
    monkeypatch.setattr(BatchUFM, "chunk", chunk)
    counts = [[8, 4, 3], [3, 4, 8], [5, 5, 5], [2, 9, 4]]
    cfgs = [make_config(cn, widths=[6, 4], lambda_w=1e-2, lambda_h=1e-3, bias=True, seed=s,
                        lr=(0.1, 0.05, 0.1, 0.08)[s], **KW) for s, cn in enumerate(counts)]
    e = _engine(cfgs)
    _advance(e, cfgs, 0, 20)
    keep = [3, 1, 0]
    e.select(keep)
    c = e.Z.shape[2]
    want_cn = torch.tensor([counts[i] + [1] * (c - 3) for i in keep], dtype=F64)[:, None, :] / e.N
    want_eye = torch.zeros(3, 3, c, dtype=F64)
    want_eye[:, :, :3] = -torch.eye(3, dtype=F64)
    assert torch.equal(e.cn, want_cn) and torch.equal(e.neg_eye, want_eye)
    at = 0
    for ch in e.chunks:
        assert torch.equal(ch.cn, want_cn[at: at + ch.B]) and torch.equal(ch.neg_eye, want_eye[at: at + ch.B])
        assert ch.Z.data_ptr() == e.Z[at].data_ptr() and ch.pv[2].data_ptr() == e.pv[2][at].data_ptr()
        at += ch.B
    assert at == 3 and len(e.chunks) == (1 if chunk == 0 else 3)
    _advance(e, [cfgs[i] for i in keep], 20, 60)
    for j, i in enumerate(keep):
        p, buf = _reference(cfgs[i], 60)
        assert _rel(e.ufm_flat(j), p) <= 1e-12 and _rel(e.ufm_flat(j, e.buf), buf) <= 1e-11


@pytest.mark.parametrize("widths,bias", [([5], True), ([6, 5, 4], False)])
def test_run_state_round_trip_continues_bitwise(monkeypatch, widths, bias):
    """run_state saves A and P apart (contiguous (d, K) and (d, r) blocks, the columns of [A | P]); trainers loaded
    from it build an engine whose flat, buf and X equal the saving engine's bitwise, and both continue bitwise
    (lambdas per run: the fused steps; one run per chunk)."""
    monkeypatch.setattr(BatchUFM, "chunk", 1)
    cfgs = [make_config([8, 4, 3], widths=widths, lambda_w=1e-2 * (1 + s), lambda_h=1e-3, bias=bias, seed=s, lr=0.1,
                        **KW) for s in range(3)]
    e = _engine(cfgs)
    _advance(e, cfgs, 0, 20)
    trs = [Trainer(c) for c in cfgs]
    M, K = len(widths), 3
    for i, t in enumerate(trs):
        _load_into(t, e, i, 20)
        st = t.reduced_state
        assert st["step"] == 20 and len(st["flat"]) == len(st["buf"]) == M + 2 + bias
        for saved, live in ((st["flat"], e.pv[M][i]), (st["buf"], e.bv[M][i])):
            assert saved[M].is_contiguous() and saved[M + 1].is_contiguous()
            assert torch.equal(saved[M], live[:, :K]) and torch.equal(saved[M + 1], live[:, K:])
    with torch.no_grad():
        e2 = BatchUFM(trs, method="reduced")
    assert torch.equal(e.flat, e2.flat) and torch.equal(e.buf, e2.buf) and torch.equal(e.X, e2.X)
    _advance(e, cfgs, 20, 60)
    _advance(e2, cfgs, 20, 60)
    assert torch.equal(e.flat, e2.flat) and torch.equal(e.buf, e2.buf)


def test_batch_with_stops_divergence_and_many_chunks(tmp_path, monkeypatch):
    """simulate_batch, one run per chunk, M = 1 with a bias and imbalanced counts per run: a run converging early,
    one diverging, the rest to the end (the batch re-selected twice): each run's folder as nclab.simulate's."""
    monkeypatch.setattr(BatchUFM, "chunk", 1)
    kw = dict(widths=[5], lambda_w=1e-2, lambda_h=5e-3, bias=True, steps=150, snapshot_every=10, init_std=0.3)
    cfgs = [make_config([8, 4, 3], seed=0, lr=0.3, **kw),
            make_config([3, 4, 8], seed=1, lr=0.3, stop_rel_gap=1e-2, **kw),
            make_config([5, 5, 5], seed=2, lr=8.0, **kw),
            make_config([2, 9, 4], seed=3, lr=0.2, **kw)]
    batch, ref = run_both(cfgs, tmp_path, method="reduced")
    assert [r.status for r in batch] == ["complete", "converged", "diverged", "complete"]
    compare(batch, ref)


def test_interrupted_batch_resumes_bitwise_with_bias_and_chunks(tmp_path, monkeypatch):
    """A batch (M = 1, bias, counts, lrs and lambdas per run, chunks of 2) where one run converges at step 60 (the
    batch re-selected) and which is interrupted at step 100 and resumed writes the uninterrupted batch's
    metrics.csv bytes and weights: the checkpoints' A, P and buffers join back into [A | P] exactly."""
    monkeypatch.setattr(BatchUFM, "chunk", 2)
    kw = dict(widths=[5], lambda_h=5e-3, bias=True, steps=160, snapshot_every=20, checkpoint_every=20, init_std=0.3)
    cfgs = [make_config(cn, lambda_w=1e-2 * (1 + s % 2), seed=s, lr=(0.2, 0.2, 0.15, 0.2)[s],
                        stop_rel_gap=(0, 0.2, 0, 0)[s], **kw)
            for s, cn in enumerate([[8, 4, 3], [3, 4, 8], [5, 5, 5], [2, 9, 4]])]
    full = simulate_batch(cfgs, [tmp_path / f"f{i}" for i in range(4)])
    assert [(r.status, r.step) for r in full] == [("complete", 160), ("converged", 60)] + [("complete", 160)] * 2
    outs = [tmp_path / f"p{i}" for i in range(4)]

    def stop(i, row):
        if i == 3 and row["step"] == 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_batch(cfgs, outs, callback=stop)
    ck = RunStore(outs[2]).load_torch("checkpoint.pt")
    assert ck["reduced"]["step"] == 100 and [tuple(t.shape) for t in ck["reduced"]["flat"]][1:3] == [(5, 3), (5, 5)]
    simulate_batch(cfgs, outs, resume=True)
    for i in range(4):
        assert (outs[i] / "metrics.csv").read_bytes() == (tmp_path / f"f{i}" / "metrics.csv").read_bytes()
        assert torch.equal(torch.as_tensor(RunStore(outs[i]).load_torch("weights.pt")["H"]),
                           torch.as_tensor(full[i].H))
