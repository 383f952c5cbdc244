"""The deep linear UFM setting, validated once at the public boundary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Problem:
    """A deep linear UFM setting.

    Attributes
    ----------
    counts : tuple of K ints, samples per class n_1..n_K (each >= 1)
    widths : tuple of M ints, [d_1 = d, d_2, ..., d_M]; layer j maps d_j -> d_{j+1}, d_{M+1} = K
    lambda_w : tuple of M floats > 0, weight decay of W_1..W_M
    lambda_h : float > 0, feature decay
    bias : bool, unregularized last-layer bias
    loss : "mse" or "ce"
    """

    counts: tuple[int, ...]
    widths: tuple[int, ...]
    lambda_w: tuple[float, ...]
    lambda_h: float
    bias: bool = False
    loss: str = "mse"

    # -- derived quantities (theory.md section 0) --
    @property
    def K(self) -> int:
        return len(self.counts)

    @property
    def M(self) -> int:
        return len(self.widths)

    @property
    def N(self) -> int:
        return int(sum(self.counts))

    @property
    def rank_budget(self) -> int:
        """R = min(K, d_1, ..., d_M): the product W_M..W_1 has rank at most R."""
        return min(self.K, *self.widths)

    @property
    def lambda_bar(self) -> float:
        """Geometric mean of the layer decays (the only way they enter the optimal value)."""
        return float(np.exp(np.mean(np.log(self.lambda_w))))

    @property
    def balanced(self) -> bool:
        return len(set(self.counts)) == 1

    def to_dict(self) -> dict:
        return {
            "counts": list(self.counts),
            "widths": list(self.widths),
            "lambda_w": list(self.lambda_w),
            "lambda_h": self.lambda_h,
            "bias": self.bias,
            "loss": self.loss,
        }


def _positive_float(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or math.isinf(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


#: largest count or width accepted: float64 holds every integer up to 2^53 exactly
MAX_INT = 2**53


def check_int(value, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in [``low``, ``high``], or one clear ValueError (bools, NaN, inf, fractions,
    strings that are not numbers and integers too large for float64 are refused)."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if isinstance(value, (int, np.integer)):
        v = int(value)
    else:
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name} must be {what}, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        v = int(f)
    if v < low:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be at most {high:,}, got {value!r}")
    return v


def _positive_int(value, name: str, high: int | None = MAX_INT) -> int:
    return check_int(value, name, 1, high)


def _as_list(value, name: str) -> list | None:
    """None for a scalar, else the values as a flat list (one ValueError for ragged or odd input)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        nd = np.ndim(value)
        return None if nd == 0 else list(np.ravel(np.asarray(value, dtype=object)))
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be one number or a flat list of numbers, got {value!r}") from None


def _count_list(values: list) -> list[int]:
    """Class counts as Python ints; vectorized for integer input (10^5 classes in milliseconds)."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        arr = None
    # numpy turns [True, 2] into [1, 2]: a bool among Python values goes to the per-value check, which refuses it
    has_bool = not isinstance(values, np.ndarray) and any(isinstance(v, (bool, np.bool_)) for v in values)
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu" and arr.size and not has_bool:
        if int(arr.min()) >= 1 and int(arr.max()) <= MAX_INT:
            return arr.astype(np.int64).tolist()
    return [_positive_int(c, "every class count") for c in values]


def _problem_memory(K: int, M: int) -> float:
    """Bytes of the O(K M) per-class/per-mode arrays of :func:`nclab.theory.predict` (no K x K matrix)."""
    return (600.0 + 40.0 * M) * K + 200.0 * M


def make_problem(
    counts: Sequence[int] | None = None,
    *,
    classes: int | None = None,
    per_class: int | None = None,
    depth: int | None = None,
    widths: Sequence[int] | int | None = None,
    lambda_w: Sequence[float] | float = 5e-4,
    lambda_h: float = 5e-4,
    bias: bool = False,
    loss: str = "mse",
) -> Problem:
    """Validate user input and build a :class:`Problem`; every error is one clear ``ValueError``.

    ``counts`` or (``classes``, ``per_class``) give the class sizes. ``widths`` is one int (all layers
    equal) or M ints; ``depth`` M defaults to ``len(widths)`` or to ``len(lambda_w)`` or 1. Default
    width: 64 (the paper's synthetic experiments). ``lambda_w`` is one value or M values.
    """
    from nclab.theory.resources import check_memory

    if counts is None:
        if classes is None or per_class is None:
            raise ValueError("give the class counts, or both the number of classes and the samples per class")
        classes = _positive_int(classes, "the number of classes", None)
        per_class = _positive_int(per_class, "the samples per class")
        if classes < 2:
            raise ValueError(f"need at least K = 2 classes, got {classes}")
        check_memory(_problem_memory(classes, 1), f"K = {classes:,} classes")
        counts = [per_class] * classes
    elif classes is not None or per_class is not None:
        raise ValueError("give either counts or classes/per-class, not both")
    count_list = _as_list(counts, "counts")
    if count_list is None:
        raise ValueError(f"counts must be a list of class sizes, got {counts!r}")
    counts = _count_list(count_list)
    if len(counts) < 2:
        raise ValueError(f"need at least K = 2 classes, got {len(counts)}")

    lam_list = _as_list(lambda_w, "lambda_w")
    width_list = None if widths is None else _as_list(widths, "widths")
    if depth is None:
        depth = len(width_list) if width_list is not None else (len(lam_list) if lam_list else 1)
    M = _positive_int(depth, "depth M", None)
    check_memory(_problem_memory(len(counts), M), f"K = {len(counts):,} classes and depth M = {M:,}")
    if width_list is None:
        w = 64 if widths is None else widths
        width_list = [w] * M
    if len(width_list) != M:
        raise ValueError(f"widths has {len(width_list)} values but depth M = {M} needs exactly M")
    width_list = [_positive_int(w, "every width") for w in width_list]
    if lam_list is None:
        lam_list = [lambda_w] * M
    if len(lam_list) != M:
        raise ValueError(f"lambda_w has {len(lam_list)} values but depth M = {M} needs 1 or M")
    lam_list = [_positive_float(v, "lambda_w") for v in lam_list]
    lambda_h = _positive_float(lambda_h, "lambda_h")
    if not isinstance(loss, str) or loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    if not isinstance(bias, (bool, np.bool_)):
        raise ValueError(f"bias must be true or false, got {bias!r}")
    return Problem(tuple(counts), tuple(width_list), tuple(lam_list), lambda_h, bool(bias), loss)
