"""Pretrained ImageNet weights from torchvision: a given file, or torchvision's cache under TORCH_HOME.

Nothing is downloaded unless the file is missing from the cache and the
network allows it; otherwise the error names the file that is needed and where.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.hub import get_dir

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = ["PretrainedWeightsError", "load_pretrained_state", "cached_weights_path"]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are neither in a given file nor in the cache, and cannot be downloaded."""


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision keeps `weights` once downloaded: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_pretrained_state(weights: WeightsEnum, source: str | Path) -> dict[str, Any]:
    """A state dict from `source`: "imagenet" (torchvision's cache, or a download), or a file path.

    Files are loaded with weights_only=True: tensors only, nothing unpickled.
    """
    if str(source) != "imagenet":
        path = Path(source)
        if not path.is_file():
            raise PretrainedWeightsError(f"no weights file at {path}")
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = cached_weights_path(weights)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, RuntimeError (hash), OSError
        raise PretrainedWeightsError(
            f"ImageNet weights {cached.name} are not in {cached.parent} and could not be downloaded "
            f"({type(exc).__name__}: {exc}); copy {weights.url.rsplit('/', 1)[-1]} there (or set TORCH_HOME), "
            f"or pass the file's path as weights"
        ) from None
