"""Labelled pictures for the 150x150 convnets: a directory of class folders, or
crops of scikit-image's sample photos when no directory is given.

A directory is read like Keras' flow_images_from_directory: `root/train/<class>/*`,
`root/validation/<class>/*` and optionally `root/test/<class>/*`, classes in
alphabetical order (for two classes, the second is the positive one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from torchvision.transforms import v2

from .errors import DatasetError

__all__ = ["PictureSet", "image_folders", "skimage_cat_crops", "to_tensor"]

_OTHER_PHOTOS = (
    "coffee",
    "astronaut",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "grass",
    "gravel",
    "brick",
    "coins",
    "clock",
)


def to_tensor(size: tuple[int, int]) -> v2.Transform:
    """PIL image -> float32 CHW in [0, 1] at `size` (the rescale = 1/255 step)."""
    from torchvision.transforms import v2  # here: importing torchvision costs every command 2 s

    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.ToDtype(torch.float32, scale=True)])


class PictureSet(Dataset):
    """(picture tensor, label) pairs from in-memory PIL images, transformed when read."""

    def __init__(
        self, images: Sequence[Image.Image], labels: Sequence[int], transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.images, self.labels, self.transform = list(images), torch.as_tensor(labels, dtype=torch.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def skimage_cat_crops(train_per_class: int = 240, held_out_per_class: int = 60, seed: int = 0):
    """Square crops of scikit-image's photos: label 1 from `chelsea` (a cat), 0 from eleven others.

    Training crops come from the left two thirds of every photo; validation
    and test crops (different random crops) from the right third, so no
    held-out pixel is seen in training. Returns (train, validation, test), each
    (images, labels); validation has half as many crops as test.
    """
    import skimage.data  # only this default needs scikit-image's sample photos

    rng = np.random.default_rng(seed)

    def crops(photo: np.ndarray, count: int, held_out: bool) -> list[Image.Image]:
        photo = np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
        height, width = photo.shape[:2]
        x0, x1 = (2 * width // 3, width) if held_out else (0, 2 * width // 3)
        out = []
        for _ in range(count):
            side = int(rng.uniform(0.5, 0.9) * min(height, x1 - x0))
            x = int(rng.integers(x0, x1 - side + 1))
            y = int(rng.integers(0, height - side + 1))
            out.append(Image.fromarray(np.ascontiguousarray(photo[y : y + side, x : x + side])))
        return out

    splits = []
    for held_out, per_class in ((False, train_per_class), (True, held_out_per_class // 2), (True, held_out_per_class)):
        cat = crops(skimage.data.chelsea(), per_class, held_out)
        others = [
            img
            for name in _OTHER_PHOTOS
            for img in crops(getattr(skimage.data, name)(), -(-per_class // len(_OTHER_PHOTOS)), held_out)
        ]
        others = others[:per_class]
        splits.append((cat + others, [1] * len(cat) + [0] * len(others)))
    return splits[0], splits[1], splits[2]


def image_folders(
    root: Path, train_transform: v2.Transform, eval_transform: v2.Transform
) -> tuple[Dataset, Dataset, Dataset, tuple[str, ...]]:
    """(train, validation, test, classes) from `root`'s train/validation[/test] class folders."""
    missing = [part for part in ("train", "validation") if not (root / part).is_dir()]
    if missing:
        raise DatasetError(
            f"{root} needs {' and '.join(p + '/' for p in missing)} with one folder per class (like flow_images_from_directory)"
        )
    from torchvision.datasets import ImageFolder

    try:
        train = ImageFolder(str(root / "train"), transform=train_transform)
        validation = ImageFolder(str(root / "validation"), transform=eval_transform)
        test = ImageFolder(str(root / "test"), transform=eval_transform) if (root / "test").is_dir() else validation
    except (FileNotFoundError, OSError) as exc:
        raise DatasetError(f"cannot read images under {root}: {exc}") from None
    if validation.classes != train.classes or test.classes != train.classes:
        raise DatasetError(
            f"class folders differ: train {train.classes}, validation {validation.classes}, test {test.classes}"
        )
    return train, validation, test, tuple(train.classes)
