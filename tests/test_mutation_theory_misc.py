"""nclab.theory.predict beyond the other suites (mutation testing, scripts/mutation.py theory): a Problem passed
to predict keeps every field (widths, loss), and the refusal of search=False for imbalanced deep CE."""

import re

import pytest

from nclab.theory import make_problem, predict


def test_predict_of_a_problem_keeps_its_widths_and_loss():
    """predict(Problem) rebuilds the problem from all its fields: the widths (which do not change the MSE optimum
    above K) and the loss (which does) come back as given, and the answer is that of the same keywords."""
    q = make_problem([3, 2, 2], widths=[5, 7], lambda_w=[1e-3, 2e-3], lambda_h=3e-3, loss="ce")
    p = predict(q)
    assert tuple(p.problem.widths) == (5, 7) and p.problem.loss == "ce"
    ref = predict([3, 2, 2], widths=[5, 7], lambda_w=[1e-3, 2e-3], lambda_h=3e-3, loss="ce")
    assert p.objective == pytest.approx(ref.objective, rel=1e-12)
    mse = predict(make_problem([3, 2, 2], widths=[5, 7], lambda_w=[1e-3, 2e-3], lambda_h=3e-3))
    assert mse.problem.loss == "mse" and abs(mse.objective - p.objective) > 1e-3 * abs(p.objective)


def test_search_false_for_imbalanced_deep_ce_is_refused_with_the_reason():
    msg = ("search=False: CE with unequal counts and M >= 2 has no closed form; its answer is the rank search "
           "(search=None or True)")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        predict([3, 2, 2], depth=2, loss="ce", search=False)


def test_overflowing_feature_scale_is_refused_with_a_finite_size_and_no_warning():
    """s/(s+c)^2 beyond float64 (tiny decays): one ValueError giving its size as a power of ten computed from
    logarithms (~1e623, not ~1einf), and no RuntimeWarning from the exponential on the way."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^the optimal per-layer class-mean Grams exceed float64 \(~1e623\) "):
            predict([3, 2], widths=4, lambda_w=[5e-324, 1e300, 1e300], lambda_h=5e-324)
