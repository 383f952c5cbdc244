"""Data loaders on files written here in the exact IDX / CIFAR formats, the embedded digits, imbalanced subsets."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nclab.data import (
    NORMALIZATION,
    PAPER_IMBALANCED_COUNTS,
    PAPER_TRANSFORMS,
    imbalanced_subset,
    load_dataset,
    read_cifar_batch,
    read_idx,
)

FASHION = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


# ---------------------------------------------------------------- writers in the published formats
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x000008NN, NN big-endian uint32 sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path, data: bytes, gz: bool = False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


def write_mnist(folder, split="train", n=20, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    stem = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write(os.path.join(folder, f"{stem}-images-idx3-ubyte{ext}"), idx_bytes(images), gz)
    write(os.path.join(folder, f"{stem}-labels-idx1-ubyte{ext}"), idx_bytes(labels), gz)
    return images, labels


def write_cifar(root, n=6, seed=0):
    """cifar-10-batches-py/ with data_batch_1..5 and test_batch of n images each, pickled like the original."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
        blob = pickle.dumps(batch, protocol=2)
        # the published batches come from numpy 1.x, which names the array rebuilder numpy.core.multiarray
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(blob)
        batches[name] = (data, labels)
    return batches


# ---------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write(str(tmp_path / ("a.idx" + (".gz" if gz else ""))), idx_bytes(a), gz)
    b = read_idx(path, expect_magic=0x00000803)
    assert b.dtype == np.uint8 and b.shape == (2, 3, 4) and (a == b).all()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "MNIST/raw"])
def test_mnist_loads_raw_and_gz_flat_and_torchvision_layout(tmp_path, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    images, labels = write_mnist(str(folder), "test", n=12, gz=gz)
    X, y = load_dataset("mnist", tmp_path, "test", normalize=False)
    assert X.shape == (12, 1, 28, 28) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(X[:, 0], torch.from_numpy(images).float() / 255) and y.tolist() == labels.tolist()
    Xn, _ = load_dataset("mnist", tmp_path, "test")
    assert torch.allclose(Xn, (X - 0.1307) / 0.3081, atol=1e-6)


def test_fashion_mnist_uses_the_torchvision_folder_name(tmp_path):
    write_mnist(str(tmp_path / "FashionMNIST" / "raw"), "train", n=10)
    X, y = load_dataset("fashion-mnist", tmp_path)
    assert X.shape == (10, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_dataset("mnist", tmp_path)  # MNIST's own folder is MNIST/raw, not FashionMNIST/raw


def test_paper_mnist_transform_three_channels_32x32(tmp_path):
    images, _ = write_mnist(str(tmp_path), n=4)
    X, _ = load_dataset("mnist", tmp_path, **PAPER_TRANSFORMS["mnist"])
    assert X.shape == (4, 3, 32, 32)
    assert torch.equal(X[:, 0], X[:, 1]) and torch.equal(X[:, 0], X[:, 2])
    # a constant image stays constant through the resize, then is normalized with the paper's constants
    write_mnist(str(tmp_path / "c"), n=2)
    const = np.full((2, 28, 28), 200, np.uint8)
    write(str(tmp_path / "c" / "train-images-idx3-ubyte"), idx_bytes(const))
    Xc, _ = load_dataset("mnist", tmp_path / "c", size=32)
    assert torch.allclose(Xc, torch.full_like(Xc, (200 / 255 - 0.1307) / 0.3081), atol=1e-5)


def test_missing_file_names_the_file_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", tmp_path, "test")
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path) in msg and "\n" not in msg
    write_mnist(str(tmp_path), "train")
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no root given"):
        load_dataset("mnist")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_a_clear_error(tmp_path, gz):
    write_mnist(str(tmp_path), n=5, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut the raw data, or the gzip stream
    with pytest.raises(ValueError, match="truncated") as err:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(err.value)


def test_truncated_header_trailing_bytes_and_count_mismatch(tmp_path):
    images, labels = write_mnist(str(tmp_path), n=5)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:10])
    with pytest.raises(ValueError, match="truncated IDX file .header"):
        load_dataset("mnist", tmp_path)
    path.write_bytes(idx_bytes(images) + b"\0")
    with pytest.raises(ValueError, match="1 bytes after the data"):
        load_dataset("mnist", tmp_path)
    path.write_bytes(idx_bytes(images[:4]))
    with pytest.raises(ValueError, match="4 images but .* 5 labels"):
        load_dataset("mnist", tmp_path)


def test_wrong_magic_is_a_clear_error(tmp_path):
    images, labels = write_mnist(str(tmp_path), n=5)
    # labels where images belong: a valid IDX file with the wrong magic (0x00000801)
    write(str(tmp_path / "train-images-idx3-ubyte"), idx_bytes(labels))
    with pytest.raises(ValueError, match="wrong IDX magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", tmp_path)
    write(str(tmp_path / "train-images-idx3-ubyte"), b"\x1f\x8b" + idx_bytes(images)[2:])  # not IDX at all
    with pytest.raises(ValueError, match="not an IDX file"):
        load_dataset("mnist", tmp_path)
    write(str(tmp_path / "train-images-idx3-ubyte"), b"\0\0")
    with pytest.raises(ValueError, match="no 4-byte magic"):
        load_dataset("mnist", tmp_path)


def test_gz_name_with_plain_content_is_a_clear_error(tmp_path):
    images, labels = write_mnist(str(tmp_path), n=3)
    os.rename(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="corrupt gzip"):
        load_dataset("mnist", tmp_path)


def test_labels_out_of_range(tmp_path):
    write_mnist(str(tmp_path), n=3)
    write(str(tmp_path / "train-labels-idx1-ubyte"), idx_bytes(np.array([0, 1, 12], np.uint8)))
    with pytest.raises(ValueError, match="0..9, found 12"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR-10
class _CallsGetcwd:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar10_train_and_test(tmp_path):
    batches = write_cifar(str(tmp_path), n=6)
    X, y = load_dataset("cifar10", tmp_path, normalize=False)
    assert X.shape == (30, 3, 32, 32) and y.shape == (30,)
    data, labels = batches["data_batch_2"]
    assert y[6:12].tolist() == labels
    # 1024 red values, then green, then blue, each row-major 32x32
    assert torch.equal(X[6, 1, 0, :] * 255, torch.from_numpy(data[0, 1024:1056]).float())
    Xt, yt = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", "test")  # the batches folder itself
    assert Xt.shape == (6, 3, 32, 32)
    mean, std = NORMALIZATION["cifar10"]
    raw = torch.from_numpy(batches["test_batch"][0]).float().view(-1, 3, 32, 32) / 255
    assert torch.allclose(Xt, (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    with pytest.raises(ValueError, match="3 channels"):
        load_dataset("cifar10", tmp_path, channels=1)


def test_cifar10_missing_truncated_and_malicious(tmp_path):
    write_cifar(str(tmp_path), n=2)
    folder = tmp_path / "cifar-10-batches-py"
    os.remove(folder / "data_batch_4")
    with pytest.raises(FileNotFoundError, match=f"data_batch_4 in {folder}"):
        load_dataset("cifar10", tmp_path)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="test_batch: truncated or corrupt"):
        load_dataset("cifar10", tmp_path, "test")
    (folder / "test_batch").write_bytes(pickle.dumps(_CallsGetcwd(), protocol=2))  # would call os.getcwd()
    with pytest.raises(ValueError, match="refusing to load"):
        read_cifar_batch(folder / "test_batch")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"shape \(n, 3072\)"):
        load_dataset("cifar10", tmp_path, "test")
    with pytest.raises(ValueError, match="no root given"):
        load_dataset("cifar10")


# ---------------------------------------------------------------- embedded digits
def test_digits_is_embedded_and_split_deterministically():
    X, y = load_dataset("digits")
    Xt, yt = load_dataset("digits", split="test")
    assert X.shape == (1437, 1, 8, 8) and Xt.shape == (360, 1, 8, 8)
    assert torch.bincount(y).tolist() == [143, 146, 142, 146, 144, 145, 144, 143, 141, 143]
    assert torch.bincount(torch.cat([y, yt])).min() >= 174  # ~180 per class over the 1797 images
    assert abs(X.mean().item()) < 1e-3 and abs(X.std().item() - 1) < 1e-3  # normalized with its own train stats
    raw, _ = load_dataset("digits", normalize=False)
    assert raw.min() == 0 and raw.max() == 1
    X32, _ = load_dataset("digits", channels=3, size=32)
    assert X32.shape == (1437, 3, 32, 32)
    with pytest.raises(ValueError, match="embedded"):
        load_dataset("digits", "/tmp")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("digits", split="val")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_dataset("digits", size=0)
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        load_dataset("digits", channels=2.5)


# ---------------------------------------------------------------- imbalanced subsets
def test_paper_imbalanced_subset_exact_and_deterministic():
    y = torch.arange(10).repeat(600)  # 600 per class
    idx = imbalanced_subset(y, PAPER_IMBALANCED_COUNTS, seed=3)
    assert idx.dtype == torch.int64 and len(idx) == 3000
    assert torch.bincount(y[idx]).tolist() == list(PAPER_IMBALANCED_COUNTS)
    assert torch.equal(idx, imbalanced_subset(y, PAPER_IMBALANCED_COUNTS, seed=3))
    assert not torch.equal(idx, imbalanced_subset(y, PAPER_IMBALANCED_COUNTS, seed=4))
    assert torch.all(idx[1:] > idx[:-1])  # sorted, no repeats


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(0, 2**31))
def test_imbalanced_subset_property(labels, seed):
    y = np.array(labels)
    avail = np.bincount(y, minlength=5)
    counts = [int(a) // 2 for a in avail]
    idx = imbalanced_subset(y, counts, seed).numpy()
    assert np.bincount(y[idx], minlength=5).tolist() == counts and len(set(idx.tolist())) == len(idx)


def test_imbalanced_subset_errors():
    y = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="class 0 has 2 samples but counts asks for 3"):
        imbalanced_subset(y, [3, 1])
    with pytest.raises(ValueError, match="counts must be >= 0, got -1 for class 1"):
        imbalanced_subset(y, [1, -1])
    with pytest.raises(ValueError, match="counts must be integers"):
        imbalanced_subset(y, [1, 1.5])
    with pytest.raises(ValueError, match=r"labels must lie in 0..0"):
        imbalanced_subset(y, [1])
    with pytest.raises(ValueError, match="integer labels"):
        imbalanced_subset(torch.tensor([0.0, 1.0]), [1, 1])


# ---------------------------------------------------------------- real Fashion-MNIST (Debian package)
@pytest.mark.skipif(
    not os.path.isdir(FASHION), reason=f"{FASHION} absent: apt-get install -y dataset-fashion-mnist (Debian)"
)
def test_real_fashion_mnist_counts_and_statistics():
    X, y = load_dataset("fashion-mnist", split="train", normalize=False)  # default root: the Debian folder
    assert X.shape == (60000, 1, 28, 28) and torch.bincount(y).tolist() == [6000] * 10
    assert abs(X.mean().item() - 0.2860) < 1e-3 and abs(X.std().item() - 0.3530) < 1e-3
    Xt, yt = load_dataset("fashion-mnist", split="test", normalize=False)
    assert Xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    Xn, _ = load_dataset("fashion-mnist", split="test", **PAPER_TRANSFORMS["fashion-mnist"])
    assert Xn.shape == (10000, 3, 32, 32) and abs(Xn.mean().item()) < 0.05
