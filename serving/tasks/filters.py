"""Filter patterns by gradient ascent in input space, on an exported `<model>_filters` graph
(deepr export NAME --filters): in-process with onnxruntime, or through a V2 server.

From a grey picture with a little noise, each step adds the gradient of the filter's mean
activation, divided by its root mean square, so steps have the same size whatever the
layer's scale; after `steps` steps the input is shown as a picture.

    gradients = LocalFilterGradients("models/vgg16_filters/1/model.onnx")
    result = ascend(gradients, "block3_conv1", filters=range(64))
    filter_grid(result.pictures).save("block3_conv1.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.preprocessing import ImagePreprocessing
from serving.protocol.schema import CHANNELS_KEY, LAYERS_KEY, PREPROCESSING_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = [
    "FilterGradients",
    "LocalFilterGradients",
    "ServedFilterGradients",
    "AscentResult",
    "ascend",
    "filter_grid",
    "to_picture",
]


def _outputs(layer: str) -> list[str]:
    return [f"{layer}.loss", f"{layer}.gradient"]


class FilterGradients(GraphTask):
    """(loss, gradient) for one layer's filters from an exported filter graph; only that
    layer's forward and backward run (a pruned session in-process, requested outputs on a server)."""

    kind = "filter graph"
    export_hint = "deepr export NAME --filters"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(LAYERS_KEY) or graph.inputs != ["images", "filter_index"]:
            raise self.refuse()
        self.layers: list[str] = graph.fact(LAYERS_KEY)
        self.channels = dict(zip(self.layers, graph.fact(CHANNELS_KEY, [])))
        self.input_shape = graph.item_shape("images")
        text = graph.fact(PREPROCESSING_KEY, None)
        self.preprocess = ImagePreprocessing.from_json(text) if text else None

    def __call__(self, images: np.ndarray, filters: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
        if layer not in self.layers:
            raise ValueError(f"{self.graph.name} has no layer {layer}; it has {', '.join(self.layers)}")
        names = _outputs(layer)
        out = self.graph.run({"images": images, "filter_index": filters.reshape(-1, 1).astype(np.int64)}, outputs=names)
        return out[names[0]].reshape(-1), out[names[1]]


class LocalFilterGradients(FilterGradients):
    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="filter graph"))


class ServedFilterGradients(FilterGradients):
    def __init__(self, model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None) -> None:
        super().__init__(ServedGraph(model, url=url, client=client))


@dataclass
class AscentResult:
    layer: str
    filters: list[int]
    inputs: np.ndarray
    """The final model inputs, (N, C, H, W)."""
    losses: np.ndarray
    """(steps + 1, N): each filter's mean activation before every step and after the last."""

    @property
    def pictures(self) -> list[Image.Image]:
        return [to_picture(x) for x in self.inputs]


def ascend(
    gradients: FilterGradients,
    layer: str,
    filters: Sequence[int],
    *,
    steps: int = 40,
    step: float = 0.05,
    noise: float = 0.1,
    seed: int = 0,
) -> AscentResult:
    """Gradient ascent for each filter at once (one batch). `step` is in the model's input
    units per step of unit-RMS gradient; `noise` is the starting noise's amplitude, around
    a grey picture (the model's preprocessing applied)."""
    filters = list(filters)
    rng = np.random.default_rng(seed)
    channels, height, width = gradients.input_shape
    grey = 0.5 + noise * (rng.random((len(filters), height, width, channels)) - 0.5)
    if gradients.preprocess is not None:
        pixels = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
        pictures = [
            Image.fromarray(p[..., 0] if channels == 1 else p).convert(gradients.preprocess.color_mode) for p in pixels
        ]
        x = gradients.preprocess(pictures)
    else:
        x = grey.transpose(0, 3, 1, 2).astype(np.float32)
    index = np.asarray(filters, dtype=np.int64)
    losses = []
    for _ in range(steps):
        loss, gradient = gradients(x, index, layer)
        losses.append(loss)
        rms = np.sqrt((gradient**2).mean(axis=(1, 2, 3), keepdims=True)) + 1e-5
        x = (x + step * gradient / rms).astype(np.float32)
    losses.append(gradients(x, index, layer)[0])
    return AscentResult(layer, filters, x, np.stack(losses))


def to_picture(x: np.ndarray) -> Image.Image:
    """A model input (C, H, W) as a picture: centred, spread to a standard deviation of 0.1
    around mid-grey, clipped (the tutorial's deprocess_image)."""
    x = (x - x.mean()) / (x.std() + 1e-5) * 0.1 + 0.5
    pixels = (np.clip(x, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def filter_grid(pictures: Sequence[Image.Image], *, columns: int = 8, gap: int = 4) -> Image.Image:
    """Pictures of equal size in a grid with white gaps (8x8 for 64 filters)."""
    width, height = pictures[0].size
    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    grid = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), "white")
    for i, picture in enumerate(pictures):
        grid.paste(picture.convert("RGB"), ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return grid
