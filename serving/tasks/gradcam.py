"""Grad-CAM heatmaps from an exported `<model>_gradcam` graph: in-process with onnxruntime,
or through a deepr (or any V2) server. numpy, Pillow and matplotlib's colour maps only.

    heatmaps = LocalGradCAM("models/mnist_convnet_gradcam/1/model.onnx")(["digit.png"])
    heatmaps = gradcam(["cat.jpg"], "catsdogs_convnet_gradcam", url="localhost:8001")
    overlay(Image.open("cat.jpg"), heatmaps[0].heatmap).save("heat.png")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from serving.client import DEFAULT_URL, InferenceClient, client_for
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, load_image
from serving.protocol.schema import LABELS_KEY, LAYER_KEY, PREPROCESSING_KEY
from serving.runtime.providers import open_session

"""Config parameter with the class names (JSON), so one inference call gives scores and labels."""

__all__ = ["LABELS_KEY", "GradCAMResult", "LocalGradCAM", "gradcam", "overlay", "TOP_CLASS"]

TOP_CLASS = -1


@dataclass(frozen=True)
class GradCAMResult:
    heatmap: np.ndarray
    """float32 (height, width) of the original picture, scaled to [0, 1]."""
    raw_heatmap: np.ndarray
    """The graph's heatmap at the layer's resolution, unscaled."""
    class_index: int
    label: str
    score: float
    """The model's output for that class."""


def _upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    peak = float(heatmap.max())
    scaled = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
    return np.asarray(Image.fromarray(scaled.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def _results(
    pictures: list[Image.Image], scores: np.ndarray, heatmaps: np.ndarray, classes: np.ndarray, labels: Sequence[str]
) -> list[GradCAMResult]:
    out = []
    for picture, row, heat, requested in zip(pictures, scores, heatmaps, classes.reshape(-1)):
        index = int(row.argmax()) if requested < 0 else int(requested)
        label = labels[index] if index < len(labels) else str(index)
        out.append(GradCAMResult(_upsample(heat, picture.size), heat, index, label, float(row[index])))
    return out


def _class_column(count: int, class_index: int | Sequence[int] | None, num_classes: int) -> np.ndarray:
    if class_index is None:
        return np.full((count, 1), TOP_CLASS, dtype=np.int64)
    indices = [int(class_index)] * count if isinstance(class_index, (int, np.integer)) else list(class_index)
    column = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    if len(column) != count:
        raise ValueError(f"{len(column)} class indices for {count} images")
    bad = [int(c) for c in column.reshape(-1) if not TOP_CLASS <= c < num_classes]
    if bad:
        raise ValueError(
            f"class index {bad[0]} is out of range: the model has {num_classes} classes (0..{num_classes - 1}; -1 = top class)"
        )
    return column


class LocalGradCAM:
    """Runs an exported Grad-CAM graph in this process (CUDA when usable, else CPU)."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        self.session = open_session(onnx_file, device, what="Grad-CAM model")
        meta = self.session.get_modelmeta().custom_metadata_map
        if PREPROCESSING_KEY not in meta:
            raise ValueError(
                f"{onnx_file} carries no deepr.preprocessing metadata: export it with `deepr export NAME --gradcam`"
            )
        self.preprocess = ImagePreprocessing.from_json(meta[PREPROCESSING_KEY])
        self.labels: list[str] = json.loads(meta.get(LABELS_KEY, "[]"))
        self.layer = meta.get(LAYER_KEY, "")

    def __call__(
        self, images: Sequence[ImageInput], class_index: int | Sequence[int] | None = None, invert: str = "auto"
    ) -> list[GradCAMResult]:
        """`invert`: for digit models, pictures drawn dark on light are inverted (auto, yes, no)."""
        pictures = [load_image(i) for i in images]
        classes = _class_column(len(pictures), class_index, self.session.get_outputs()[0].shape[1])
        scores, heatmaps = self.session.run(
            ["scores", "heatmap"], {"images": self.preprocess(pictures, invert), "class_index": classes}
        )
        return _results(pictures, scores, heatmaps, classes, self.labels)


def gradcam(
    images: Sequence[ImageInput],
    model: str,
    *,
    url: str = DEFAULT_URL,
    class_index: int | Sequence[int] | None = None,
    client: InferenceClient | None = None,
    invert: str = "auto",
) -> list[GradCAMResult]:
    """Heatmaps from a served Grad-CAM model; `class_index` None (or -1) means each image's top
    class; `invert` as in ImagePreprocessing.inverts (digit models: dark-on-light pictures)."""
    with client_for(url, client) as c:
        config = c.model_config(model)
        if PREPROCESSING_KEY not in config.parameters or "heatmap" not in [o.name for o in config.output]:
            raise ValueError(f"model {model!r} is not a Grad-CAM graph (export one with `deepr export NAME --gradcam`)")
        preprocess = ImagePreprocessing.from_json(config.parameters[PREPROCESSING_KEY].string_value)
        pictures = [load_image(i) for i in images]
        count = int(np.prod(config.output[0].dims))
        classes = _class_column(len(pictures), class_index, count)
        outputs = c.infer(
            model, {"images": preprocess(pictures, invert), "class_index": classes}, outputs=["scores", "heatmap"]
        )
    labels = json.loads(config.parameters[LABELS_KEY].string_value) if LABELS_KEY in config.parameters else []
    return _results(pictures, outputs["scores"], outputs["heatmap"], classes, labels)


def overlay(picture: ImageInput, heatmap: np.ndarray, *, alpha: float = 0.4, colormap: str = "jet") -> Image.Image:
    """The picture with the [0, 1] heatmap blended over it in a colour map (as the tutorial's elephants)."""
    from matplotlib import colormaps  # colour tables only; no figure is drawn

    base = load_image(picture).convert("RGB")
    if heatmap.shape != (base.height, base.width):
        heatmap = _upsample(heatmap, base.size)
    colours = (colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3] * 255).astype(np.uint8)
    return Image.blend(base, Image.fromarray(colours), alpha)
