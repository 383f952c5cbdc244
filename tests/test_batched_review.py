"""Review probes of the batched trainer's two-pass heavy ball (nclab.ufm.batched._sgd_lerp) and its hyperparameter
sort: each against unbatched ``nclab.simulate`` runs (``compare`` of test_batched) or a plain float64 reference.

The float64 probes also check which update ran (a spy on ``lerp_coefficients`` or ``_sgd_lerp``), so they cannot
pass by silently falling back to the three-pass update.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nclab.ufm.batched as batched
from nclab.results import RunStore
from nclab.ufm import make_config, simulate
from nclab.ufm.batched import BatchUFM, simulate_batch
from nclab.ufm.trainer import Trainer
from tests.test_batched import BASE, compare, run_both

SHORT = {**BASE, "steps": 100, "snapshot_every": 25}


@pytest.fixture
def lerp_calls(monkeypatch):
    """(lr, mu, lam, applies) of every lerp_coefficients call, and the batch sizes _sgd_lerp ran on."""
    calls, sizes = [], []
    real, real_lerp = batched.lerp_coefficients, BatchUFM._sgd_lerp

    def spy(lr, mu, lam):
        out = real(lr, mu, lam)
        calls.append((lr, mu, lam, out is not None))
        return out

    def lerp(self, n, coef, whole):
        sizes.append(self.B)
        return real_lerp(self, n, coef, whole)

    monkeypatch.setattr(batched, "lerp_coefficients", spy)
    monkeypatch.setattr(BatchUFM, "_sgd_lerp", lerp)
    return calls, sizes


@pytest.mark.parametrize("shape,method", [
    (dict(depth=1, counts=[8, 4, 3], bias=True), "reduced"),
    (dict(depth=4, counts=[8, 4, 3], bias=True), "reduced"),
    (dict(depth=None, widths=[6, 3], lambda_w=[1e-2, 2e-2], lambda_h=5e-3, bias=True), "reduced"),
    (dict(depth=None, widths=[6, 4, 3], lambda_w=[2e-2, 5e-3, 1e-2], lambda_h=1e-3, bias=False), "direct"),
])
def test_lerp_blocks_depths_widths_per_layer_lambdas(tmp_path, lerp_calls, shape, method):
    """Depth 1 and 4, unequal widths, a lambda per layer, a bias (decay 0) with imbalanced counts: the two-pass
    update runs with each block's own lambda (W_1..W_M, then lambda_H for H or the reduced form's [A | P], then 0
    for b) and every run ends as alone."""
    kw = {**SHORT, "classes": None, "per_class": None, "counts": [5, 5, 5], **shape}
    bias = kw.pop("bias")
    cfgs = [make_config(**{**kw, "init_std": 0.3 + 0.05 * s}, seed=s, bias=bias) for s in range(2)]
    compare(*run_both(cfgs, tmp_path, method=method))
    calls, sizes = lerp_calls
    lw = cfgs[0].problem.lambda_w
    blocks = list(lw) + [cfgs[0].problem.lambda_h] + ([0.0] if bias else [])
    assert [lam for _, _, lam, _ in calls[: len(blocks)]] == blocks
    assert all(ok for *_, ok in calls) and set(sizes) == {2}


def _boundary_momentum(lr, lam):
    """The momentum at which lr mu c^2 + (1 - mu - lr lam) c + lam = 0 has a double root (bisection)."""
    lo, hi = 0.5, 0.99  # real roots at lo, complex at hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - mid - lr * lam) ** 2 - 4 * lr * mid * lam >= 0 else (lo, mid)
    return lo, hi


@pytest.mark.parametrize("side", [0, 1])
def test_momentum_at_the_complex_root_boundary(tmp_path, lerp_calls, side):
    """Momentum one ulp either side of the double root (lr = 0.1, lambda = 1e-2): the real side takes the two-pass
    update (a nearly double root), the complex side the three-pass one; both end as alone."""
    mu = _boundary_momentum(0.1, 1e-2)[side]
    cfgs = [make_config(**SHORT, seed=s, momentum=mu) for s in range(2)]
    compare(*run_both(cfgs, tmp_path))
    assert bool(lerp_calls[1]) == (side == 0)


def test_tiny_lambda_and_ce_direct(tmp_path, lerp_calls):
    """lambda = 1e-12 (the decay nearly 0, beta nearly 1) and the CE loss (direct method) with a bias."""
    cfgs = [make_config(**{**SHORT, "lambda_w": 1e-12, "lambda_h": 1e-12}, seed=s) for s in range(2)]
    cfgs += [make_config(**SHORT, seed=s, loss="ce", bias=True) for s in range(2)]
    compare(*run_both(cfgs, tmp_path))
    assert lerp_calls[1] == [2] * 8  # 4 intervals of each batch (MSE, CE)


def test_divergence_inside_a_lerp_chunk(tmp_path, lerp_calls):
    """Runs of one lr and lambda (one two-pass chunk), one diverging after its first rows: it stops with its last
    good state and the current (non-finite) buffer as alone, the other goes on unharmed."""
    kw = {**SHORT, "lambda_w": 1e-4, "lambda_h": 1e-4, "snapshot_every": 5}
    cfgs = [make_config(**{**kw, "init_std": std}, seed=0, lr=0.5) for std in (0.5, 0.6)]
    batch, ref = run_both(cfgs, tmp_path)
    assert [r.status for r in batch] == ["complete", "diverged"] and batch[1].step == 5
    compare(batch, ref)
    assert lerp_calls[1][0] == 2


def test_interleaved_lambdas_rechunked_in_input_order(tmp_path, lerp_calls, monkeypatch):
    """Lambdas interleaved in the input (a, b, a, b, a, b), chunks of 2, one run stopping early (the batch
    re-chunked mid-run): results, folders and callback rows come back in input order, each run as alone."""
    monkeypatch.setattr(BatchUFM, "chunk", 2)
    cfgs = [make_config(**{**SHORT, "lambda_w": 1e-2 * (1 + s % 2)}, seed=s) for s in range(6)]
    cfgs[2] = cfgs[2].replace(stop_rel_gap=0.5)
    seen = []
    batch = simulate_batch(cfgs, [tmp_path / f"b{i}" for i in range(6)], callback=lambda i, row: seen.append(
        (row["step"], i, row["objective"])))
    ref = [simulate(c, out=tmp_path / f"s{i}", _trainer=True) for i, c in enumerate(cfgs)]
    compare(batch, ref)
    assert [r.config for r in batch] == cfgs and batch[2].status == "converged" and batch[2].step < 100
    for i, r in enumerate(ref):  # the folders' config.json and rows are checked by compare
        np.testing.assert_allclose([o for _, j, o in seen if j == i], [row["objective"] for row in r.history],
                                   rtol=1e-10)
    steps = [s for s, _, _ in seen]
    assert steps == sorted(steps)
    for step in set(steps):
        order = [i for s, i, _ in seen if s == step]
        assert order == sorted(order), (step, order)
    assert set(lerp_calls[1]) == {1, 2}


def _stop_at(step):
    def cb(row):
        if row["step"] == step:
            raise KeyboardInterrupt
    return cb


def test_interrupt_from_callback_checkpoints_the_real_buffer(tmp_path, lerp_calls):
    """Ctrl-C from the callback after a two-pass interval: the checkpoint holds buf (not u = p + buf / c), the one
    an unbatched run interrupted at that step holds."""
    cfgs = [make_config(**SHORT, seed=s) for s in range(2)]

    def stop(i, row):
        if row["step"] == 50 and i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_batch(cfgs, [tmp_path / f"b{i}" for i in range(2)], callback=stop)
    for i, c in enumerate(cfgs):
        with pytest.raises(KeyboardInterrupt):
            simulate(c, out=tmp_path / f"s{i}", callback=_stop_at(50), _trainer=True)
        a, b = (RunStore(tmp_path / f"{x}{i}").load_torch("checkpoint.pt") for x in "bs")
        assert a["step"] == b["step"] == 50
        ma, mb = a["optimizer"]["momentum_buffer"], b["optimizer"]["momentum_buffer"]
        torch.testing.assert_close(ma, mb, rtol=0, atol=1e-12 * float(mb.abs().max()))
    assert lerp_calls[1]


@pytest.mark.parametrize("method", ["reduced", "direct"])
def test_interrupt_inside_the_steps_then_resume_alone(tmp_path, monkeypatch, method):
    """KeyboardInterrupt raised half-way through a two-pass interval (u in the buffer, the runs mid-way): each
    checkpoint is the last good snapshot's state with the real buffer; nclab.simulate and simulate_batch resume
    them to the unbatched runs."""
    cfgs = [make_config(**SHORT, seed=s) for s in range(3)]
    outs = [tmp_path / f"b{i}" for i in range(3)]
    real = BatchUFM.gradient_ if method == "direct" else BatchUFM._reduced_steps
    calls = [0]

    if method == "direct":
        def patched(self, mu=None):
            if isinstance(mu, list):
                calls[0] += 1
                if calls[0] == 2 * 25 + 12:  # step 12 of the third interval
                    raise KeyboardInterrupt
            return real(self, mu)
        monkeypatch.setattr(BatchUFM, "gradient_", patched)
    else:
        def patched(self, n, moms, update):
            calls[0] += 1
            if calls[0] == 3:
                real(self, n // 2, moms, update)
                raise KeyboardInterrupt
            return real(self, n, moms, update)
        monkeypatch.setattr(BatchUFM, "_reduced_steps", patched)
    with pytest.raises(KeyboardInterrupt):
        simulate_batch(cfgs, outs, method=method)
    monkeypatch.setattr(BatchUFM, "gradient_" if method == "direct" else "_reduced_steps", real)
    for i, c in enumerate(cfgs):
        assert RunStore(outs[i]).read_json("summary.json")["status"] == "interrupted"
        with pytest.raises(KeyboardInterrupt):
            simulate(c, out=tmp_path / f"i{i}", callback=_stop_at(50), _trainer=True)
        a, b = (RunStore(d).load_torch("checkpoint.pt") for d in (outs[i], tmp_path / f"i{i}"))
        assert a["step"] == b["step"] == 50
        ma, mb = a["optimizer"]["momentum_buffer"], b["optimizer"]["momentum_buffer"]
        torch.testing.assert_close(ma, mb, rtol=0, atol=1e-12 * float(mb.abs().max()))
        torch.testing.assert_close(a["flat"], b["flat"], rtol=0, atol=1e-12)
    alone = simulate(cfgs[0], out=outs[0], resume=True)
    rest = simulate_batch(cfgs[1:], outs[1:], resume=True, method=method)
    compare([alone] + rest, [simulate(c, out=tmp_path / f"s{i}", _trainer=True) for i, c in enumerate(cfgs)])


def test_float32_two_pass_as_accurate_as_one_run():
    """float32 runs with a small lr * lambda: the batched run is about as far from the float64 run as the
    unbatched float32 run is. (The two-pass momentum beta = (1 - c lr) mu is 1 - O(lr lambda / (1 - mu)); rounded to
    float32 it shifts the decay by ~eps / (1 - beta) relative, here 1e-5 / 6e-8: 14x the error of one run.)"""
    kw = {**BASE, "lambda_w": 1e-3, "lambda_h": 1e-3, "steps": 2000, "snapshot_every": 1000}
    cfgs = [make_config(**kw, seed=s, lr=1e-3, dtype="float32") for s in range(2)]
    exact = [simulate(c.replace(dtype="float64"), _trainer=True) for c in cfgs]
    alone = [simulate(c, _trainer=True) for c in cfgs]
    batch = simulate_batch(cfgs)

    def err(res):
        return max(float(np.abs(np.asarray(r.H, np.float64) - np.asarray(e.H)).max()) for r, e in zip(res, exact))

    assert err(batch) <= 4 * err(alone), (err(batch), err(alone))


def test_restored_buffer_over_many_snapshot_intervals(monkeypatch):
    """10,000 steps in intervals of 10 (buf -> u -> buf 1,000 times), lr = lambda = 1e-3 (c ~ -111: restoring
    buf = c (u - p) loses ~7 bits): buffer and parameters stay within 1e-10 of the three-pass path and of a plain
    heavy-ball loop (Trainer._advance, one run)."""
    cfg = make_config(**{**BASE, "lambda_w": 1e-3, "lambda_h": 1e-3}, seed=0, lr=1e-3, bias=True)
    real = batched.lerp_coefficients

    def run(coef):
        monkeypatch.setattr(batched, "lerp_coefficients", coef)
        eng = BatchUFM([Trainer(cfg)], method="reduced")
        for s in range(0, 10_000, 10):
            eng.advance(10, s, None)
        return eng.ufm_flat(0), eng.ufm_flat(0, eng.buf)

    used = []
    p2, b2 = run(lambda *a: used.append(real(*a)) or used[-1])
    p3, b3 = run(lambda *a: None)
    assert used and all(u is not None for u in used)
    plain = Trainer(cfg)
    plain._advance(10_000)
    scale = float(plain.buf.abs().max())
    assert scale > 1e-3  # not converged: the buffer is not round-off
    for p, b in ((p2, b2), (p3, b3)):
        assert float((b - plain.buf).abs().max()) <= 1e-10 * scale
        assert float((p - plain.model.flat).abs().max()) <= 1e-10
    assert float((b2 - b3).abs().max()) <= 1e-10 * scale
