"""Datasets the recipes train on, each with its labels and input preprocessing.

A dataset *family* fixes what a model sees (28x28 digits, multi-hot word
vectors, padded word sequences, ...). Each family has an embedded default made
of real data that ships with an installed package, and reads the same kind of
data from a path the user gives (MNIST IDX files, Keras' imdb.npz, ...).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from serving.protocol.preprocessing import ImagePreprocessing
from serving.protocol.text_encoding import WordEncoding, multi_hot, pad_sequences

from .augmentation import Augmentation
from .chars import CHARSET, CharWindows, encode_text, read_corpus
from .digits import load_digits_28x28
from .errors import DatasetError
from .images import PictureSet, image_folders, skimage_cat_crops, to_tensor
from .mnist import load_mnist, load_mnist_10k, read_idx
from .stdlib_text import docstrings
from .text import load_imdb_npz, stdlib_prose_code

__all__ = [
    "Augmentation",
    "DatasetError",
    "DatasetInfo",
    "SupervisedData",
    "data_home",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "load_mnist",
    "load_mnist_10k",
    "read_idx",
]

DIGIT_CLASSES = tuple(str(d) for d in range(10))
# MNIST-style input: one grey channel, 28x28, pixel values scaled to [0, 1], light ink on a
# dark ground (pictures of dark ink on paper are inverted first), framed as MNIST's digits.
DIGIT_PREPROCESSING = ImagePreprocessing(
    size=(28, 28), color_mode="L", scale=1 / 255, background="dark", framing="mnist"
)

# Word-vector settings of the tutorial's models: 10,000 words multi-hot for the
# dense nets; 1,000 words, sequences cut to 100 tokens, for the recurrent ones.
MULTI_HOT_WORDS = 10_000
SEQUENCE_WORDS = 1_000
SEQUENCE_LENGTH = 100


@dataclass(frozen=True)
class DatasetInfo:
    """What a trained model inherits from its dataset, known without loading the data."""

    classes: tuple[str, ...]
    """Class names; for binary tasks (negative, positive)."""
    preprocessing: ImagePreprocessing | None = None
    """How a picture becomes an input, for image datasets."""
    text: WordEncoding | None = None
    """How a text becomes an input (vocabulary and all), for word datasets; known once loaded."""


@dataclass(frozen=True)
class SupervisedData:
    """Train and held-out test splits as tensors, with what the model inherits."""

    name: str
    train: Dataset
    """(inputs, labels) pairs; inputs float32 or int64 token ids, labels int64."""
    test: Dataset
    info: DatasetInfo
    description: str
    validation: Dataset | None = None
    """Held-back data to validate on after each epoch; None: the trainer splits it from `train`."""

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def preprocessing(self) -> ImagePreprocessing | None:
        return self.info.preprocessing


@dataclass(frozen=True)
class _Family:
    info: DatasetInfo | Callable[[], DatasetInfo]
    """Or a function giving it, for facts that cost an import to know (ImageNet's class names)."""
    default: Callable[..., SupervisedData]
    """The embedded data; called with the options the family takes (augmentation, base_weights)."""
    from_path: Callable[..., SupervisedData]
    """The user's data at a path, with the same options."""
    path_kind: str
    """What a user path must be, for error messages."""
    aliases: dict[str, Callable[[], SupervisedData]] = field(default_factory=dict)
    augments: bool = False
    """Whether its loaders take an Augmentation for the training split."""
    takes_base_weights: bool = False
    """Whether its loaders compute features with a pretrained base."""


def data_home() -> Path:
    """Where downloaded datasets are kept: $DEEPR_HOME/data (default ~/.cache/deepr/data)."""
    return Path(os.environ.get("DEEPR_HOME", Path.home() / ".cache" / "deepr")) / "data"


# -- digits / MNIST ------------------------------------------------------------------------------------------------


def _digit_tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) * DIGIT_PREPROCESSING.scale).unsqueeze(1)  # (N, 1, 28, 28)
    return TensorDataset(x, torch.from_numpy(labels))


_DIGITS_INFO = DatasetInfo(DIGIT_CLASSES, DIGIT_PREPROCESSING)


def _held_out(labels: np.ndarray, test_fraction: float) -> np.ndarray:
    """A fixed, stratified hold-out mask: the same test images for every run and seed."""
    rng = np.random.default_rng(0)
    test_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: round(test_fraction * np.sum(labels == c))] for c in range(10)]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    return is_test


def _split_digits(name: str, images: np.ndarray, labels: np.ndarray, what: str) -> SupervisedData:
    is_test = _held_out(labels, 0.2)
    return SupervisedData(
        name=name,
        train=_digit_tensors(images[~is_test], labels[~is_test]),
        test=_digit_tensors(images[is_test], labels[is_test]),
        info=_DIGITS_INFO,
        description=f"{what}: {int((~is_test).sum())} train, {int(is_test.sum())} held-out test images",
    )


def _mnist_10k() -> SupervisedData:
    images, labels = load_mnist_10k()
    return _split_digits("mnist_10k", images, labels, "10,000 real MNIST digits (embedded)")


def _sklearn_digits() -> SupervisedData:
    images, labels = load_digits_28x28()
    return _split_digits("sklearn_digits", images, labels, "scikit-learn digits at 28x28")


def _mnist(root: Path, download: bool = False) -> SupervisedData:
    splits = load_mnist(root, download=download)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    if train_x.shape[1:] != (28, 28):
        raise DatasetError(f"MNIST images in {root} are {train_x.shape[1:]}, the models take 28x28")
    return SupervisedData(
        name="mnist",
        train=_digit_tensors(train_x, train_y),
        test=_digit_tensors(test_x, test_y),
        info=_DIGITS_INFO,
        description=f"MNIST from {root}: {len(train_y)} train, {len(test_y)} test images",
    )


# -- word vectors --------------------------------------------------------------------------------------------------

_PROSE_CODE_INFO = DatasetInfo(("code", "prose"))
_IMDB_INFO = DatasetInfo(("negative", "positive"))


def _words(num_words: int, maxlen: int | None, source: Path | None) -> SupervisedData:
    """Word data as multi-hot vectors (maxlen None) or padded sequences."""
    words: list[str] | None
    if source is None:
        (train_x, train_y), (test_x, test_y), words = stdlib_prose_code(num_words)
        name, classes = "prose_code", _PROSE_CODE_INFO.classes
        description = (
            f"standard-library prose vs code snippets: {len(train_y)} train, {len(test_y)} held-out (other files)"
        )
    else:
        (train_x, train_y), (test_x, test_y), words = load_imdb_npz(source, num_words)
        name, classes = "imdb", _IMDB_INFO.classes
        description = f"IMDB reviews from {source}: {len(train_y)} train, {len(test_y)} test"
    encoding = WordEncoding(tuple(words), num_words, maxlen) if words is not None else None

    def tensors(x: list[list[int]], y: np.ndarray) -> TensorDataset:
        vectors = multi_hot(x, num_words) if maxlen is None else pad_sequences(x, maxlen)
        return TensorDataset(torch.from_numpy(vectors), torch.from_numpy(y))

    return SupervisedData(
        name, tensors(train_x, train_y), tensors(test_x, test_y), DatasetInfo(classes, text=encoding), description
    )


def _multi_hot(source: Path | None = None) -> SupervisedData:
    return _words(MULTI_HOT_WORDS, None, source)


def _sequences(source: Path | None = None) -> SupervisedData:
    return _words(SEQUENCE_WORDS, SEQUENCE_LENGTH, source)


# -- characters ----------------------------------------------------------------------------------------------------

_CHARS_INFO = DatasetInfo(tuple(CHARSET))
# The default corpus: the first 200,000 characters of the standard library's docstrings.
DOCSTRING_CHARS = 200_000


def _chars(text: str, name: str, description: str, test_fraction: float = 0.1) -> SupervisedData:
    codes = encode_text(text)
    cut = int(len(codes) * (1 - test_fraction))  # the held-out part is the end of the text, unseen in training
    return SupervisedData(
        name,
        CharWindows(codes[:cut]),
        CharWindows(codes[cut:]),
        _CHARS_INFO,
        f"{description}: {cut:,} training and {len(codes) - cut:,} held-out characters (the last {test_fraction:.0%})",
    )


def _docstring_chars() -> SupervisedData:
    return _chars(docstrings(DOCSTRING_CHARS), "docstrings", "standard-library docstrings")


def _text_file(path: Path) -> SupervisedData:
    return _chars(read_corpus(path), "text", str(path))


# -- pictures ------------------------------------------------------------------------------------------------------

PICTURE_SIZE = (150, 150)
_PICTURES_INFO = DatasetInfo(("other", "cat"), ImagePreprocessing(size=PICTURE_SIZE, color_mode="RGB", scale=1 / 255))


def _picture_transforms(augmentation: Augmentation | None) -> tuple[Callable, Callable]:
    plain = to_tensor(PICTURE_SIZE)
    if augmentation is None or not augmentation.enabled:
        return plain, plain
    return lambda img: augmentation.transform(PICTURE_SIZE)(plain(img)), plain


def _cat_crops(augmentation: Augmentation | None = None) -> SupervisedData:
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = skimage_cat_crops()
    train_tf, eval_tf = _picture_transforms(augmentation)
    return SupervisedData(
        "cat_crops",
        PictureSet(train_x, train_y, train_tf),
        PictureSet(test_x, test_y, eval_tf),
        _PICTURES_INFO,
        f"crops of scikit-image's chelsea (cat) vs 11 other sample photos: {len(train_y)} train (left 2/3 of each photo), "
        f"{len(val_y)} validation and {len(test_y)} test (right 1/3)",
        validation=PictureSet(val_x, val_y, eval_tf),
    )


def _picture_folders(root: Path, augmentation: Augmentation | None = None) -> SupervisedData:
    train_tf, eval_tf = _picture_transforms(augmentation)
    train, validation, test, classes = image_folders(root, train_tf, eval_tf)
    info = DatasetInfo(classes, _PICTURES_INFO.preprocessing)
    return SupervisedData(
        root.name,
        train,
        test,
        info,
        f"pictures under {root}: {len(train)} train, {len(validation)} validation, {len(test)} test",  # type: ignore[arg-type]
        validation=validation,
    )


# -- ImageNet (pretrained weights only) -----------------------------------------------------------------------------


@functools.cache
def _imagenet_info() -> DatasetInfo:
    # The category names ship with torchvision's code; asked for, not imported with the zoo.
    from torchvision.models import VGG16_Weights

    return DatasetInfo(tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"]))


def _no_imagenet(*_args: object, **_kwargs: object) -> SupervisedData:
    raise DatasetError(
        "ImageNet is not bundled and deepr does not train the ImageNet models from scratch: load their "
        "pretrained weights (weights='imagenet' or a file) and train a head on them instead, e.g. "
        "`deepr train catsdogs_vgg16`"
    )


# -- stored features of a pretrained base (the tutorial's fast transfer recipe) ---------------------------------------


def _features_of(pictures: SupervisedData, base_weights: str | None) -> SupervisedData:
    from ..recipes.transfer import extract_features  # needs the zoo's models, imported late

    weights = base_weights or "imagenet"
    splits = {part: extract_features(getattr(pictures, part), weights) for part in ("train", "validation", "test")}
    return SupervisedData(
        f"vgg16_features({pictures.name})",
        splits["train"],
        splits["test"],
        DatasetInfo(pictures.classes),
        f"VGG16 block5_pool features ({weights} weights) of {pictures.description}",
        validation=splits["validation"],
    )


def _cat_crop_features(base_weights: str | None = None) -> SupervisedData:
    return _features_of(_cat_crops(), base_weights)


def _picture_folder_features(path: Path, base_weights: str | None = None) -> SupervisedData:
    return _features_of(_picture_folders(path), base_weights)


_FAMILIES: dict[str, _Family] = {
    "digits": _Family(
        _DIGITS_INFO,
        _mnist_10k,
        _mnist,
        "a directory of MNIST IDX files (or torchvision's MNIST folder)",
        aliases={
            "mnist": lambda: _mnist(data_home() / "mnist", download=True),
            "mnist_10k": _mnist_10k,
            "sklearn_digits": _sklearn_digits,
        },
    ),
    "words_multi_hot": _Family(_PROSE_CODE_INFO, _multi_hot, _multi_hot, "Keras' imdb.npz"),
    "words_sequences": _Family(_PROSE_CODE_INFO, _sequences, _sequences, "Keras' imdb.npz"),
    "chars": _Family(_CHARS_INFO, _docstring_chars, _text_file, "a text file or an http(s) URL"),
    "vgg16_features": _Family(
        _PICTURES_INFO,
        _cat_crop_features,
        _picture_folder_features,
        "a directory with train/ and validation/ class folders",
        takes_base_weights=True,
    ),
    "imagenet": _Family(_imagenet_info, _no_imagenet, _no_imagenet, "ImageNet (not bundled)"),
    "pictures": _Family(
        _PICTURES_INFO,
        _cat_crops,
        _picture_folders,
        "a directory with train/ and validation/ class folders",
        augments=True,
    ),
}


def list_datasets() -> list[str]:
    return sorted(_FAMILIES)


def _family(name: str) -> _Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {list_datasets()}") from None


def dataset_info(name: str) -> DatasetInfo:
    """Labels and preprocessing of a dataset family, known without loading it."""
    info = _family(name).info
    return info if isinstance(info, DatasetInfo) else info()


def load_dataset(
    source: str, like: str | None = None, augmentation: Augmentation | None = None, base_weights: str | None = None
) -> SupervisedData:
    """Load a dataset.

    Args:
        source: a family name ("digits", "words_multi_hot", "chars", "pictures", ...)
            for its embedded default; "mnist" for MNIST in data_home() (downloaded
            when missing and the network allows); or a path (or URL, for text),
            read as data of family `like`: a directory of MNIST IDX files, Keras'
            imdb.npz, a text file, a directory of class folders.
        like: the family a path belongs to; default "digits".
        augmentation: random transforms for the training split of picture data.
        base_weights: weights of the pretrained base that computes stored features.
    """
    name = source if source in _FAMILIES else (like or "digits")
    family = _family(name)
    options: dict[str, Any] = {}
    if augmentation is not None and augmentation.enabled:
        if not family.augments:
            raise DatasetError(f"augmentation applies to picture datasets; {name!r} is not one")
        options["augmentation"] = augmentation
    if family.takes_base_weights:
        options["base_weights"] = base_weights
    if source in _FAMILIES:
        return family.default(**options)
    for candidate in _FAMILIES.values():
        if source in candidate.aliases:
            return candidate.aliases[source]()
    if family is _FAMILIES["chars"] and source.startswith(("http://", "https://")):
        return _chars(read_corpus(source), "text", source)
    path = Path(source)
    if not path.exists():
        raise DatasetError(
            f"unknown dataset {source!r}: not one of {list_datasets()} and no such path (expected {family.path_kind})"
        )
    return family.from_path(path, **options)
