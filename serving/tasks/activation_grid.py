"""Pictures of feature maps: every channel of a layer's activation for one image, tiled in a
grid (the tutorial's cat figures), each channel scaled to its own range."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["activation_grid"]


def activation_grid(
    activation: np.ndarray, *, columns: int = 16, cell: int = 64, gap: int = 2, colormap: str = "viridis"
) -> Image.Image:
    """`activation`: (channels, height, width) for one image. Channels that are constant
    (dead filters) come out flat, as in the tutorial's figures."""
    if activation.ndim != 3:
        raise ValueError(
            f"a layer's activation for one image is (channels, height, width), got shape {activation.shape}"
        )
    from matplotlib import colormaps

    channels = activation.shape[0]
    columns = min(columns, channels)
    rows = math.ceil(channels / columns)
    low = activation.min(axis=(1, 2), keepdims=True)
    span = activation.max(axis=(1, 2), keepdims=True) - low
    scaled = np.where(span > 0, (activation - low) / np.where(span > 0, span, 1), 0.0)
    colours = (colormaps[colormap](scaled)[..., :3] * 255).astype(np.uint8)  # (channels, H, W, 3)
    grid = Image.new("RGB", (columns * (cell + gap) - gap, rows * (cell + gap) - gap), "white")
    for index, tile in enumerate(colours):
        picture = Image.fromarray(tile).resize((cell, cell), Image.Resampling.NEAREST)
        grid.paste(picture, ((index % columns) * (cell + gap), (index // columns) * (cell + gap)))
    return grid
