"""Datasets the recipes train on, each with its labels and input preprocessing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from serving.preprocessing import ImagePreprocessing

from .digits import load_digits_28x28
from .errors import DatasetError
from .mnist import load_mnist, read_idx

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "ImageClassificationData",
    "data_home",
    "dataset_info",
    "load_dataset",
    "load_mnist",
    "read_idx",
]

DIGIT_CLASSES = tuple(str(d) for d in range(10))
# MNIST-style input: one grey channel, 28x28, pixel values scaled to [0, 1].
DIGIT_PREPROCESSING = ImagePreprocessing(size=(28, 28), color_mode="L", scale=1 / 255)


@dataclass(frozen=True)
class DatasetInfo:
    """What a trained model inherits from its dataset, known without loading the data."""

    classes: tuple[str, ...]
    preprocessing: ImagePreprocessing


_INFO = {"digits": DatasetInfo(DIGIT_CLASSES, DIGIT_PREPROCESSING), "mnist": DatasetInfo(DIGIT_CLASSES, DIGIT_PREPROCESSING)}


def dataset_info(name: str) -> DatasetInfo:
    """Labels and preprocessing of a dataset by name (a directory of IDX files counts as mnist)."""
    return _INFO.get(name, _INFO["mnist"] if Path(name).is_dir() else None) or _unknown(name)


def _unknown(name: str) -> DatasetInfo:
    raise DatasetError(f"unknown dataset {name!r}: expected one of {sorted(_INFO)} or a directory of MNIST IDX files")


@dataclass(frozen=True)
class ImageClassificationData:
    """Train and held-out test splits of a labelled image dataset, as float tensors."""

    name: str
    train: TensorDataset
    """(images float32 (N, C, H, W) preprocessed, labels int64 (N,))."""
    test: TensorDataset
    classes: tuple[str, ...]
    preprocessing: ImagePreprocessing
    description: str


def data_home() -> Path:
    """Where downloaded datasets are kept: $DEEPR_HOME/data (default ~/.cache/deepr/data)."""
    return Path(os.environ.get("DEEPR_HOME", Path.home() / ".cache" / "deepr")) / "data"


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) * DIGIT_PREPROCESSING.scale).unsqueeze(1)  # (N, 1, 28, 28)
    return TensorDataset(x, torch.from_numpy(labels))


def _digits(test_fraction: float = 0.2) -> ImageClassificationData:
    images, labels = load_digits_28x28()
    # A fixed, stratified hold-out: the same test images for every run and seed.
    rng = np.random.default_rng(0)
    test_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: round(test_fraction * np.sum(labels == c))] for c in range(10)]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    return ImageClassificationData(
        name="digits",
        train=_to_tensors(images[~is_test], labels[~is_test]),
        test=_to_tensors(images[is_test], labels[is_test]),
        classes=DIGIT_CLASSES,
        preprocessing=DIGIT_PREPROCESSING,
        description=f"scikit-learn digits at 28x28: {int((~is_test).sum())} train, {int(is_test.sum())} held-out test images",
    )


def _mnist(root: Path, download: bool) -> ImageClassificationData:
    splits = load_mnist(root, download=download)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    if train_x.shape[1:] != (28, 28):
        raise DatasetError(f"MNIST images in {root} are {train_x.shape[1:]}, the models take 28x28")
    return ImageClassificationData(
        name="mnist",
        train=_to_tensors(train_x, train_y),
        test=_to_tensors(test_x, test_y),
        classes=DIGIT_CLASSES,
        preprocessing=DIGIT_PREPROCESSING,
        description=f"MNIST from {root}: {len(train_y)} train, {len(test_y)} test images",
    )


def load_dataset(source: str) -> ImageClassificationData:
    """Load a dataset by name or path.

    Args:
        source: "digits" (embedded, offline), "mnist" (the IDX files under
            data_home()/mnist, downloaded there when missing and the network
            allows), or a directory holding MNIST's IDX files.
    """
    if source == "digits":
        return _digits()
    if source == "mnist":
        return _mnist(data_home() / "mnist", download=True)
    path = Path(source)
    if path.is_dir():
        return _mnist(path, download=False)
    return _unknown(source)
