"""Reader for CIFAR-10's "python version" batches (``cifar-10-batches-py/data_batch_1`` ... ``test_batch``).

Each batch is a pickled dict with ``b"data"``: uint8 array of shape (n, 3072) (1024 red, then green, then
blue values of a 32x32 image, row-major) and ``b"labels"``: n ints in 0..9. The unpickler below only
rebuilds numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

# the only globals a CIFAR batch needs: numpy array reconstruction (numpy 1.x and 2.x module names), and
# _codecs.encode, which Python 3 pickles use for bytes at protocol 2
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch.

    Parameters
    ----------
    path : str or path-like
        A batch file such as ``cifar-10-batches-py/data_batch_1``.

    Returns
    -------
    images : ndarray of shape (n, 3, 32, 32), uint8
    labels : ndarray of shape (n,), int64 in 0..9

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Truncated or corrupt pickle, or contents not shaped like a CIFAR-10 batch; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: truncated or corrupt CIFAR-10 batch ({exc})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a pickled {type(batch).__name__}, expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 batch (no 'data' and 'labels' entries)")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: CIFAR-10 'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: CIFAR-10 'labels' must be {data.shape[0]} integers, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: CIFAR-10 labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
