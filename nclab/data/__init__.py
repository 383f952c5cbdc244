"""Datasets from local files (never downloaded) and class-imbalanced subsets.

* :func:`load_dataset` -- ``(X, y)`` tensors for "mnist", "fashion-mnist", "cifar10", "digits" (embedded).
* :func:`imbalanced_subset` -- indices keeping ``counts[k]`` samples of class k, deterministic by seed.
* :func:`read_idx`, :func:`read_cifar_batch` -- the raw file readers.
"""

from nclab.data.cifar import read_cifar_batch
from nclab.data.datasets import DATASETS, DEFAULT_ROOTS, NORMALIZATION, PAPER_TRANSFORMS, load_dataset
from nclab.data.idx import read_idx
from nclab.data.subsets import PAPER_IMBALANCED_COUNTS, imbalanced_subset

__all__ = [
    "DATASETS",
    "DEFAULT_ROOTS",
    "NORMALIZATION",
    "PAPER_IMBALANCED_COUNTS",
    "PAPER_TRANSFORMS",
    "imbalanced_subset",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
]
