"""Input validation at the public boundary: one clear ValueError or TypeError naming the argument, never a
numpy/torch traceback; sizes that cannot fit are refused before anything is allocated."""

from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch

F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)
GEMM_DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------ scalars
def check_int(value, name: str, low: int = 1) -> int:
    """An integer >= low (Python int, numpy integer or an integral float); bools refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


def check_float(value, name: str) -> float:
    """A finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def check_rtol(value, name: str = "rtol") -> float:
    """Relative tolerance of the NC1 pseudo-inverse: float64 epsilon (2.2e-16) <= rtol < 1.

    0 would invert round-off (NC1 ~ 1e28) and >= 1 keeps no direction at all."""
    v = check_float(value, name)
    if not EPS <= v < 1:
        raise ValueError(f"{name} must satisfy {EPS:.3g} <= {name} < 1 (relative to the largest singular value; "
                         f"default 1e-6), got {value!r}")
    return v


def check_fraction(value, name: str) -> float:
    """A tolerance in [0, 1)."""
    v = check_float(value, name)
    if not 0 <= v < 1:
        raise ValueError(f"{name} must satisfy 0 <= {name} < 1, got {value!r}")
    return v


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_device(device) -> torch.device | None:
    """None or a device torch can allocate on here (ValueError otherwise, e.g. 'cuda' on a CPU build)."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device, int)) or isinstance(device, bool):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
        if dev.type == "meta":
            raise ValueError("meta tensors hold no numbers")
        torch.empty(0, device=dev)
    except Exception as exc:  # RuntimeError, AssertionError (no CUDA build), ...
        raise ValueError(f"device {device!r} is not usable here: {str(exc).splitlines()[0] if str(exc) else repr(exc)}"
                         ) from None
    return dev


def check_gemm_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"gemm_dtype must be a torch dtype (torch.float64 or torch.float32), got {dtype!r}")
    if dtype not in GEMM_DTYPES:
        raise ValueError(f"gemm_dtype must be torch.float64 or torch.float32, got {dtype}")
    return dtype


# ------------------------------------------------------------------------------------------ memory
def _env_limit() -> int | None:
    """NCLAB_MEMORY_LIMIT (bytes, or with a suffix K, M, G, T), as nclab.theory.resources reads it."""
    text = os.environ.get("NCLAB_MEMORY_LIMIT")
    if not text:
        return None
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in "KMGT" else ""
    try:
        value = float(t[: len(t) - len(unit)]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    except ValueError:
        raise ValueError(f"NCLAB_MEMORY_LIMIT must be a number of bytes (e.g. 2G), got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"NCLAB_MEMORY_LIMIT must be a positive number of bytes, got {text!r}")
    return int(value)


def available_memory(device=None) -> int:
    """Bytes that can still be allocated on `device` (CPU: MemAvailable of /proc/meminfo, else physical;
    NCLAB_MEMORY_LIMIT replaces the CPU figure, as for nclab.theory)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        env = _env_limit()
        if env is not None:
            return env
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except Exception:
            return 1 << 62
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def human_bytes(n: float) -> str:
    """'1023 B', '1.5 KB', '888 PB', '1024 EB': binary units up to EB, three significant digits, never an
    exponent (999.5 <= value < 1024 and anything beyond 1024 EB print as whole numbers)."""
    unit = "B"
    for larger in ("KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1024:
            break
        n, unit = n / 1024, larger
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.3g} {unit}" if n < 999.5 else f"{n:.0f} {unit}"


def check_memory(nbytes: float, what: str, device=None) -> None:
    """Refuse (ValueError) before allocating `nbytes` when the device has not that much available."""
    avail = available_memory(device)
    if nbytes > avail:
        where = "GPU" if device is not None and torch.device(device).type == "cuda" else "memory"
        raise ValueError(f"{what} would need {human_bytes(nbytes)}, more than the {human_bytes(avail)} of {where} "
                         "available")


def as_tensor(x, name: str) -> torch.Tensor:
    """numpy array, list or tensor -> dense tensor, detached (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise ValueError(f"{name} is a {x.layout} tensor: pass a dense one ({name}.to_dense())")
        if x.is_complex():
            raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
        if x.is_meta or x.is_quantized:
            raise ValueError(f"{name} is a {'meta' if x.is_meta else 'quantized'} tensor: pass one holding numbers")
        return x.detach()
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
    try:
        with np.errstate(all="ignore"):
            arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be read as an array: {str(exc).splitlines()[0] if str(exc) else repr(exc)}"
                         ) from None
    if arr.dtype == object or arr.dtype.kind in "USVMm":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "c":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 4:
        if arr.size and int(arr.max()) >= 1 << 62:
            raise ValueError(f"{name} has values too large for int64 ({int(arr.max())})")
        arr = arr.astype(np.int64)
    if arr.dtype == np.float16 or arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        arr = arr.astype(np.float64)  # float16: fine for torch; longdouble: not supported by torch
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_features(features, dim: int | None = None) -> torch.Tensor:
    """Features (N, D), rows are samples, any real dtype; returned as given (detached, not copied)."""
    x = as_tensor(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D) (samples as rows), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features are empty: shape {tuple(x.shape)}")
    if x.dtype == torch.bool:
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"features have dimension {x.shape[1]}, expected {dim}")
    return x


def check_labels(labels, n: int, num_classes: int | None, device) -> tuple[torch.Tensor, int]:
    """Labels (N,) of integers in [0, K) -> int64 tensor on `device`, and K (max label + 1 if not given)."""
    y = as_tensor(labels, "labels")
    if y.ndim != 1:
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels have {y.shape[0]} entries but features have {n} rows")
    if y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not (y == torch.round(y)).all():
            raise ValueError("labels must be integers (got non-integer values)")
        if float(y.abs().max()) >= 2.0 ** 62:
            raise ValueError(f"labels must be class indices, got {float(y.abs().max()):g}")
    y = y.to(device=device, dtype=torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels must be non-negative, got {lo}")
    if num_classes is None:
        if hi + 1 > max(1 << 16, 16 * n):
            raise ValueError(f"largest label is {hi} for {n} samples: pass num_classes explicitly")
        num_classes = hi + 1
    num_classes = check_num_classes(num_classes)
    if hi >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}) for num_classes={num_classes}, got {hi}")
    return y, num_classes


def check_num_classes(k, name: str = "num_classes") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__} {k!r}")
    if not math.isfinite(float(k)) or float(k) != int(k):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if int(k) < 2:
        raise ValueError(f"need at least 2 classes, got {name}={int(k)}")
    return int(k)


def _to_numpy(w, name: str) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = as_tensor(w, name)
        if w.dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got dtype {w.dtype}")
        return w.to("cpu", F64).numpy()
    if w is None or isinstance(w, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array or tensor, got {type(w).__name__}")
    try:
        with np.errstate(all="ignore"):
            a = np.asarray(w)
            if a.dtype == object or a.dtype.kind not in "iuf":
                raise ValueError
            return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a real numeric array") from None


def check_matrix(w, name: str, cols: int | None = None, rows: int | None = None, min_rows: int = 1) -> np.ndarray:
    """A finite 2-D matrix as float64 numpy (small objects: classifier rows, Grams)."""
    w = _to_numpy(w, name)
    if w.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {w.shape}")
    if cols is not None and w.shape[1] != cols:
        raise ValueError(f"{name} has {w.shape[1]} columns, expected {cols} (shape {w.shape})")
    if rows is not None and w.shape[0] != rows:
        raise ValueError(f"{name} has {w.shape[0]} rows, expected {rows} (shape {w.shape})")
    if w.shape[0] < min_rows or w.shape[1] == 0:
        raise ValueError(f"{name} must have at least {min_rows} row(s) and 1 column, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf")
    return w


def check_vector(b, name: str, size: int | None) -> np.ndarray:
    b = _to_numpy(b, name)
    if b.ndim > 1 and sum(d != 1 for d in b.shape) > 1:
        raise ValueError(f"{name} must be a vector, got shape {b.shape}")
    b = b.reshape(-1)
    if size is not None and b.shape[0] != size:
        raise ValueError(f"{name} has {b.shape[0]} entries, expected {size}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contains NaN or inf")
    return b
