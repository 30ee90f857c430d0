"""The fast transfer recipe: run the frozen VGG16 base over the pictures once and keep its features."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(pictures: Dataset, weights: str, batch_size: int = 20) -> TensorDataset:
    """(block5_pool features (N, 512, 4, 4), labels) of 150x150 pictures, from VGG16 with `weights`.

    The pictures are normalised as the weights expect (ImageNet mean and
    standard deviation) before they enter the base.
    """
    from .. import get_model

    base = get_model("vgg16", include_top=False, input_shape=(150, 150, 3), weights=weights).eval()
    prep = base.preprocessing
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    features, labels = [], []
    for x, y in tqdm(DataLoader(pictures, batch_size=batch_size), desc="vgg16 features", unit="batch", disable=None):
        features.append(base((x - mean) / std))  # x is already scaled to [0, 1]
        labels.append(y)
    return TensorDataset(torch.cat(features), torch.cat(labels))
