"""``load_dataset``: MNIST, Fashion-MNIST, CIFAR-10 and the embedded digits, from local files only.

nclab never downloads. MNIST and Fashion-MNIST are read from IDX files (raw or ``.gz``) in ``root`` or in
torchvision's layout ``root/MNIST/raw`` / ``root/FashionMNIST/raw``; Fashion-MNIST defaults to Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). CIFAR-10 is read from the python
batches in ``root/cifar-10-batches-py``. "digits" (1797 8x8 images, the UCI optdigits test set as bundled
with scikit-learn, CC BY 4.0, see ``DIGITS-LICENSE.txt``) ships with nclab and needs no files.
"""

from __future__ import annotations

import gzip
import os
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from nclab.data.cifar import read_cifar_batch
from nclab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits")

# per-channel (mean, std) applied after scaling pixels to [0, 1]
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),  # the paper's
    "fashion-mnist": ((0.2860,), (0.3530,)),  # train-set pixel mean/std (the paper does not use it)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # the paper's
    "digits": ((0.3054,), (0.3755,)),  # mean/std of the embedded train split (pixels / 16)
}

# The paper's input pipeline: ``load_dataset(name, root, split, **PAPER_TRANSFORMS[name])``.
# MNIST: grayscale repeated to 3 channels, resized to 32x32 (so ResNet18/VGG16 take it unchanged).
PAPER_TRANSFORMS = {
    "mnist": {"channels": 3, "size": 32},
    "fashion-mnist": {"channels": 3, "size": 32},  # the MNIST pipeline, for a drop-in replacement
    "cifar10": {},
    "digits": {},  # native 1x8x8; pass size=32 for the convolutional backbones
}

DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}  # Debian's dataset-fashion-mnist

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_DIGITS_TRAIN = 1437  # embedded digits: first 1437 rows (80%) train, last 360 test, ~36 per class


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    channels: int | None = None,
    size: int | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole dataset split as tensors.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10", "digits"}
    root : str or path-like, optional
        Folder holding the files (see the module docstring for the layouts). Default None: Debian's folder
        for Fashion-MNIST, the embedded copy for digits (which takes no root); required for mnist, cifar10.
    split : {"train", "test"}, default "train"
    channels : int, optional
        Repeat single-channel images to this many channels (the paper uses 3 for MNIST). The repeat is a
        broadcast view (``expand``): no extra memory, so copy ``X`` before writing into it in place.
        Default None keeps the native channels (1 for mnist, fashion-mnist, digits; 3 for cifar10).
    size : int, optional
        Resize images to ``size x size``, bilinear with antialiasing (torchvision's tensor ``Resize``; the
        paper resizes MNIST to 32). Default None keeps the native size (28, 28, 32, 8).
    normalize : bool, default True
        Subtract the per-channel mean and divide by the std of ``NORMALIZATION[name]``; False leaves
        pixels in [0, 1].

    Returns
    -------
    X : Tensor of shape (N, C, H, W), float32
    y : Tensor of shape (N,), int64 in 0..9

    Raises
    ------
    FileNotFoundError
        A needed file is missing; the message says which file was expected where.
    ValueError
        A bad argument, or a truncated or malformed file (the message names the file).

    Examples
    --------
    >>> X, y = load_dataset("digits")
    >>> tuple(X.shape), tuple(y.shape)
    ((1437, 1, 8, 8), (1437,))
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    channels = _optional_positive_int(channels, "channels")
    size = _optional_positive_int(size, "size")
    if name == "cifar10" and channels not in (None, 3):  # checked before reading 50,000 images
        raise ValueError(f"cifar10 has 3 channels; channels={channels} is not supported")

    if name == "digits":
        if root is not None:
            raise ValueError("the digits dataset is embedded in nclab; call load_dataset('digits') without root")
        (images, labels), scale = _load_digits(split), 16.0
    elif name == "cifar10":
        (images, labels), scale = _load_cifar10(_need_root(name, root), split), 255.0
    else:
        (images, labels), scale = _load_idx_pair(name, _need_root(name, root), split), 255.0
        images = images[:, None]  # (N, 1, H, W)

    X = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)  # (N, C, H, W)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())  # (N,)
    if size is not None and tuple(X.shape[-2:]) != (size, size):
        from nclab.theory.resources import check_memory

        check_memory(2 * 4.0 * X.shape[0] * X.shape[1] * size * size,  # the resized copy and one more
                     f"{name} resized to {size} x {size} ({X.shape[0]:,} images)", "choose a smaller size")
        X = F.interpolate(X, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if normalize:
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALIZATION[name])
        X = X.sub_(mean).div_(std)
    if channels is not None and channels != X.shape[1]:
        X = X.expand(-1, channels, -1, -1)  # (N, 1, H, W) -> (N, channels, H, W), a view
    return X, y


def _optional_positive_int(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _need_root(name: str, root) -> str:
    if root is None:
        root = DEFAULT_ROOTS.get(name)
        if root is None:
            wanted = "cifar-10-batches-py/" if name == "cifar10" else "train-images-idx3-ubyte[.gz] etc."
            raise ValueError(f"{name}: no root given; pass root=DIR, the folder with {wanted} (nclab never downloads)")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: data folder {root} does not exist")
    return root


def _find_idx(name: str, root: str, stem: str) -> str:
    folders = [root, os.path.join(root, _TORCHVISION_FOLDER[name], "raw")]
    for folder in folders:
        for filename in (stem, stem + ".gz"):  # the uncompressed file loads faster
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"{name}: expected {stem} or {stem}.gz in {folders[0]} or in {folders[1]}")


def _load_idx_pair(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _IDX_STEMS[split]
    image_path, label_path = _find_idx(name, root, image_stem), _find_idx(name, root, label_stem)
    images = read_idx(image_path, expect_magic=IMAGES_MAGIC)  # (N, H, W) uint8
    labels = read_idx(label_path, expect_magic=LABELS_MAGIC)  # (N,) uint8
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: labels must lie in 0..9, found {labels.max()}")
    return images, labels


def _load_cifar10(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        folder = root  # the batches folder itself was given
    parts = []
    for filename in _CIFAR_FILES[split]:
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cifar10: expected {filename} in {folder} (from cifar-10-python.tar.gz)")
        parts.append(read_cifar_batch(path))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    with resources.files("nclab.data").joinpath("digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # (1797, 65): 64 pixels in 0..16, then the label
    rows = slice(0, _DIGITS_TRAIN) if split == "train" else slice(_DIGITS_TRAIN, None)
    return table[rows, :64].reshape(-1, 1, 8, 8), table[rows, 64]
