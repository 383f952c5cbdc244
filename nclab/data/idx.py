"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

An IDX file is a 4-byte magic number ``0x0000TTNN`` (TT: element type, NN: number of dimensions), NN
big-endian uint32 sizes, then the elements in C order, big-endian. MNIST images are type 0x08 (uint8)
with 3 dimensions (magic 0x00000803), labels uint8 with 1 dimension (magic 0x00000801).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# element type code -> big-endian numpy dtype
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def _read_bytes(path: str) -> bytes:
    """Whole file contents, transparently gunzipped when the name ends in ``.gz``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    if not path.endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as exc:  # truncated stream, bad gzip header, bad CRC
        raise ValueError(f"{path}: truncated or corrupt gzip file ({exc})") from None


def read_idx(path: str | os.PathLike, *, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file into a numpy array.

    Parameters
    ----------
    path : str or path-like
        An IDX file; gzip-compressed when its name ends in ``.gz``.
    expect_magic : int, optional
        Required magic number, e.g. ``IMAGES_MAGIC`` (0x00000803) for MNIST images or ``LABELS_MAGIC``
        (0x00000801) for labels; default None accepts any valid IDX file.

    Returns
    -------
    array : ndarray of shape given by the header (e.g. (N, 28, 28) uint8 images or (N,) uint8 labels)
        Native byte order, a writable copy.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Wrong magic number, truncated file, trailing bytes or a corrupt gzip stream; the message names the file.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no 4-byte magic number)")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX file (header needs {header} bytes, file has {len(data)})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise ValueError(f"{path}: truncated IDX file (shape {shape} needs {expected} data bytes, found {found})")
    if found > expected:
        raise ValueError(f"{path}: malformed IDX file ({found - expected} bytes after the data of shape {shape})")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a copy: writable, native byte order
