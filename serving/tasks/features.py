"""Features from an exported `<model>_features` graph (deepr export NAME --features):
in-process with onnxruntime, numpy and Pillow only, or through a V2 server. Both compute
only what the requested layers need, and both apply the preprocessing the export carries.

    extractor = LocalFeatureExtractor("models/vgg16_features/1/model.onnx")
    maps = extractor(["cat.jpg"], layers=["block3_conv1"])           # {"block3_conv1": (1, 256, 37, 37)}
    maps = extract_features(["cat.jpg"], model="vgg16_features", layers=["block5_pool"], url="localhost:8001")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from serving.client import DEFAULT_URL, InferenceClient, client_for
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, load_image
from serving.protocol.schema import FEATURES_LAYERS_KEY, LAYERS_KEY, PREPROCESSING_KEY
from serving.runtime.providers import open_session
from serving.runtime.sessions import part_session

__all__ = ["LocalFeatureExtractor", "extract_features", "FEATURES_LAYERS_KEY"]


def _check_layers(layers: Sequence[str] | None, available: Sequence[str], model: str) -> list[str]:
    chosen = list(layers) if layers else list(available)
    unknown = [layer for layer in chosen if layer not in available]
    if unknown:
        raise ValueError(f"{model} has no layer {', '.join(unknown)}; it has {', '.join(available)}")
    return chosen


class LocalFeatureExtractor:
    """An exported feature graph run in this process (CUDA when usable, else CPU)."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        self.onnx_file = Path(onnx_file)
        self.device = device
        self.session = open_session(onnx_file, device, what="feature graph")
        meta = self.session.get_modelmeta().custom_metadata_map
        if LAYERS_KEY not in meta:
            raise ValueError(f"{onnx_file} is not a feature graph: export one with `deepr export NAME --features`")
        self.layers: list[str] = json.loads(meta[LAYERS_KEY])
        self.preprocess = ImagePreprocessing.from_json(meta[PREPROCESSING_KEY]) if PREPROCESSING_KEY in meta else None
        self._parts: dict[frozenset[str], ort.InferenceSession] = {}

    def __call__(
        self, images: Sequence[ImageInput] | np.ndarray, layers: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """`images`: files or pictures (preprocessed as the export says), or an NCHW float32
        batch already preprocessed. Returns {layer: (N, ...) array}."""
        chosen = _check_layers(layers, self.layers, self.onnx_file.name)
        batch = _batch(images, self.preprocess)
        return dict(zip(chosen, self._session_for(chosen).run(chosen, {"images": batch})))

    def _session_for(self, layers: list[str]) -> ort.InferenceSession:
        if len(set(layers)) == len(self.layers):
            return self.session
        key = frozenset(layers)
        if key not in self._parts:
            self._parts[key] = part_session(self.onnx_file, layers, self.device)
        return self._parts[key]


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
    """The same as LocalFeatureExtractor, through a server: the request names the layers
    as its requested outputs, and the server computes only what they need."""
    with client_for(url, client) as own:
        config = own.model_config(model)
        if FEATURES_LAYERS_KEY not in config.parameters:
            raise ValueError(f"model {model!r} is not a feature graph (export one with `deepr export NAME --features`)")
        available = config.parameters[FEATURES_LAYERS_KEY].string_value.split(",")
        chosen = _check_layers(layers, available, model)
        preprocess = (
            ImagePreprocessing.from_json(config.parameters[PREPROCESSING_KEY].string_value)
            if PREPROCESSING_KEY in config.parameters
            else None
        )
        batch = _batch(images, preprocess)
        chunk = config.max_batch_size or len(batch)
        parts = [
            own.infer(model, {"images": batch[i : i + chunk]}, outputs=chosen) for i in range(0, len(batch), chunk)
        ]
    return {layer: np.concatenate([p[layer] for p in parts]) for layer in chosen}
