"""Branches of nclab.data and nclab.models the other tests do not reach (issue 15): each malformed CIFAR-10
batch, missing IDX file, empty class list and bad model size is one ValueError/FileNotFoundError that names
what is wrong (read in the CIFAR case from a batch pickled here, as the dataset's own files are)."""

import pickle

import numpy as np
import pytest

from nclab.data import imbalanced_subset, read_cifar_batch, read_idx
from nclab.models import MLP, VGG16, ResNet18


def write_batch(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def good(n=3):
    return {b"data": np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072),
            b"labels": [0, 9, 4][:n]}


def test_a_well_formed_batch_reads_as_images_and_labels(tmp_path):
    data, labels = read_cifar_batch(write_batch(tmp_path / "b", good()))
    assert data.shape == (3, 3, 32, 32) and data.dtype == np.uint8 and labels.tolist() == [0, 9, 4]
    # the first image's red plane holds bytes 0..1023 row by row
    assert data[0, 0, 1, 0] == 32 and data[1, 0, 0, 0] == 3072 % 256


@pytest.mark.parametrize("obj,msg", [
    ([1, 2], r"not a CIFAR-10 batch \(a pickled list, expected a dict\)"),
    ({b"data": good()[b"data"]}, r"no 'data' and 'labels' entries"),
    ({b"data": good()[b"data"].astype(np.float32), b"labels": [0, 1, 2]}, r"'data' must be uint8 of shape \(n, 3072\)"),
    ({b"data": good()[b"data"], b"labels": [0, 1]}, r"'labels' must be 3 integers, got shape \(2,\)"),
    ({b"data": good()[b"data"], b"labels": [0.0, 1.0, 2.0]}, "'labels' must be 3 integers"),
    ({b"data": good()[b"data"], b"labels": [0, 10, 2]}, r"labels must lie in 0..9, found 0..10"),
    ({b"data": good()[b"data"], b"labels": [-1, 1, 2]}, r"labels must lie in 0..9, found -1..2"),
])
def test_malformed_batches_are_one_error_naming_the_file(tmp_path, obj, msg):
    path = write_batch(tmp_path / "data_batch_1", obj)
    with pytest.raises(ValueError, match=msg) as info:
        read_cifar_batch(path)
    assert str(info.value).startswith(str(path) + ": ")


def test_missing_files_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_cifar_batch(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_idx(tmp_path / "train-images-idx3-ubyte")


def test_an_empty_class_list_is_refused():
    with pytest.raises(ValueError, match="counts must name at least one class"):
        imbalanced_subset(np.array([0, 1, 1]), [])


@pytest.mark.parametrize("make,msg", [
    (lambda: MLP(4, 8, depth=0), "MLP depth must be a positive integer, got 0"),
    (lambda: MLP(True, 8), "MLP in_features must be a positive integer, got True"),
    (lambda: ResNet18(in_channels=0), "ResNet18 in_channels must be a positive integer, got 0"),
    (lambda: VGG16(in_channels=2.0), "VGG16 in_channels must be a positive integer, got 2.0"),
])
def test_model_sizes_must_be_positive_integers(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
