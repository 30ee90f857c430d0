"""Features from an exported `<model>_features` graph (deepr export NAME --features):
in-process with onnxruntime, numpy and Pillow only, or through a V2 server. Both compute
only what the requested layers need, and both apply the preprocessing the export carries.

    extractor = LocalFeatureExtractor("models/vgg16_features/1/model.onnx")
    maps = extractor(["cat.jpg"], layers=["block3_conv1"])           # {"block3_conv1": (1, 256, 37, 37)}
    maps = extract_features(["cat.jpg"], model="vgg16_features", layers=["block5_pool"], url="localhost:8001")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, load_image
from serving.protocol.schema import LAYERS_KEY, PREPROCESSING_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = ["FeatureExtractor", "LocalFeatureExtractor", "ServedFeatureExtractor", "extract_features"]


class FeatureExtractor(GraphTask):
    """The activations of an exported feature graph's layers, computing only what the
    requested layers need (a pruned session in-process; requested outputs on a server)."""

    kind = "feature graph"
    export_hint = "deepr export NAME --features"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(LAYERS_KEY):
            raise self.refuse()
        self.layers: list[str] = graph.fact(LAYERS_KEY)
        text = graph.fact(PREPROCESSING_KEY, None)
        self.preprocess = ImagePreprocessing.from_json(text) if text else None

    def __call__(
        self, images: Sequence[ImageInput] | np.ndarray, layers: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """`images`: files or pictures (preprocessed as the export says), or an NCHW float32
        batch already preprocessed. Returns {layer: (N, ...) array}."""
        chosen = list(layers) if layers else list(self.layers)
        unknown = [layer for layer in chosen if layer not in self.layers]
        if unknown:
            raise ValueError(f"{self.graph.name} has no layer {', '.join(unknown)}; it has {', '.join(self.layers)}")
        return self.graph.run({"images": _batch(images, self.preprocess)}, outputs=chosen)


class LocalFeatureExtractor(FeatureExtractor):
    """An exported feature graph run in this process (CUDA when usable, else CPU)."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="feature graph"))


class ServedFeatureExtractor(FeatureExtractor):
    """A feature graph on a V2 server: the request names the layers as its outputs."""

    def __init__(self, model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None) -> None:
        super().__init__(ServedGraph(model, url=url, client=client))


def _batch(images: Sequence[ImageInput] | np.ndarray, preprocess: ImagePreprocessing | None) -> np.ndarray:
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.dtype != np.float32:
            raise ValueError(f"a preprocessed batch must be float32 (N, C, H, W), got {images.dtype} {images.shape}")
        return images
    if preprocess is None:
        raise ValueError("this graph carries no preprocessing: pass a preprocessed float32 (N, C, H, W) batch")
    return preprocess([load_image(i) for i in images])


def extract_features(
    images: Sequence[ImageInput] | np.ndarray,
    *,
    model: str,
    layers: Sequence[str] | None = None,
    url: str = DEFAULT_URL,
    client: InferenceClient | None = None,
) -> dict[str, np.ndarray]:
    """One call of a ServedFeatureExtractor."""
    with ServedFeatureExtractor(model, url=url, client=client) as extractor:
        return extractor(images, layers)
