"""DeepDream on an exported `<model>_dream` graph (deepr export inception_v3 --dream),
in-process or through a V2 server: gradient ascent on the layers' activation loss, over
octaves of growing size, putting back the detail each upscaling loses.

    loss = LocalDreamLoss("models/inception_v3_dream/1/model.onnx")
    result = dream(loss, "photo.jpg")
    result.picture.save("dream.png")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import zoom

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, load_image, to_picture
from serving.protocol.schema import LAYERS_KEY, PREPROCESSING_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = ["DreamLoss", "LocalDreamLoss", "ServedDreamLoss", "DreamResult", "dream", "TUTORIAL_COEFFICIENTS"]

TUTORIAL_COEFFICIENTS = {"mixed2": 0.2, "mixed3": 3.0, "mixed4": 2.0, "mixed5": 1.5}


class DreamLoss(GraphTask):
    """The dream loss of the picture and its gradient, from an exported DeepDream graph."""

    kind = "DeepDream graph"
    export_hint = "deepr export inception_v3 --dream"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if graph.inputs != ["images", "coefficients"]:
            raise self.refuse()
        self.layers: list[str] = graph.fact(LAYERS_KEY)
        self.preprocess = ImagePreprocessing.from_json(graph.fact(PREPROCESSING_KEY))

    def __call__(self, images: np.ndarray, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.graph.run({"images": images, "coefficients": coefficients}, outputs=["loss", "gradient"])
        return out["loss"].reshape(-1), out["gradient"]


class LocalDreamLoss(DreamLoss):
    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="DeepDream graph"))


class ServedDreamLoss(DreamLoss):
    def __init__(
        self, model: str = "inception_v3_dream", *, url: str = DEFAULT_URL, client: InferenceClient | None = None
    ) -> None:
        super().__init__(ServedGraph(model, url=url, client=client))


@dataclass
class DreamResult:
    picture: Image.Image
    losses: list[list[float]] = field(default_factory=list)
    """Per octave, the loss before each ascent step and after the last."""
    shapes: list[tuple[int, int]] = field(default_factory=list)


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    factors = (1, shape[0] / x.shape[1], shape[1] / x.shape[2])
    return zoom(x, factors, order=1).astype(np.float32)


def _ascend(
    loss: DreamLoss, x: np.ndarray, coefficients: np.ndarray, steps: int, step: float, max_loss: float
) -> tuple[np.ndarray, list[float]]:
    history = []
    for _ in range(steps):
        value, gradient = loss(x[None], coefficients)
        history.append(float(value[0]))
        if value[0] > max_loss:  # past this, the picture turns to noise
            return x, history
        gradient = gradient[0] / max(float(np.abs(gradient).mean()), 1e-7)
        x = (x + step * gradient).astype(np.float32)
    history.append(float(loss(x[None], coefficients)[0][0]))
    return x, history


def dream(
    loss: DreamLoss,
    picture: ImageInput,
    *,
    coefficients: dict[str, float] | None = None,
    octaves: int = 3,
    octave_scale: float = 1.4,
    steps: int = 20,
    step: float = 0.01,
    max_loss: float = 10.0,
) -> DreamResult:
    """The tutorial's DeepDream: from the smallest octave up, `steps` ascent steps each (the
    gradient divided by its mean magnitude), then the picture grows by `octave_scale` and the
    detail lost by shrinking the original is added back."""
    coefficients = coefficients or {layer: TUTORIAL_COEFFICIENTS.get(layer, 1.0) for layer in loss.layers}
    unknown = sorted(set(coefficients) - set(loss.layers))
    if unknown:
        raise ValueError(f"the graph has no layer {', '.join(unknown)}; it has {', '.join(loss.layers)}")
    weights = np.array([[coefficients.get(layer, 0.0) for layer in loss.layers]], np.float32)
    image = load_image(picture).convert(loss.preprocess.color_mode)
    width, height = image.size
    as_is = dataclasses.replace(loss.preprocess, size=(height, width))  # the model's scaling, the picture's size
    original = as_is([image])[0]
    shapes = [(round(height / octave_scale**i), round(width / octave_scale**i)) for i in range(octaves)][::-1]
    result = DreamResult(picture=image, shapes=shapes)
    x = _resize(original, shapes[0])
    shrunk_original = x.copy()
    for shape in shapes:
        x = _resize(x, shape)
        x, history = _ascend(loss, x, weights, steps, step, max_loss)
        result.losses.append(history)
        lost_detail = _resize(original, shape) - _resize(shrunk_original, shape)
        x = x + lost_detail
        shrunk_original = _resize(original, shape)
    result.picture = to_picture(x, as_is)
    return result


def coefficients_from(text: str | None, layers: Sequence[str]) -> dict[str, float] | None:
    """'mixed2=0.2,mixed3=3' -> {"mixed2": 0.2, "mixed3": 3.0}; None keeps the tutorial's."""
    if not text:
        return None
    pairs = {}
    for item in text.split(","):
        layer, _, value = item.partition("=")
        try:
            pairs[layer.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"expected LAYER=WEIGHT pairs like mixed3=3, got {item!r}; layers: {', '.join(layers)}"
            ) from None
    return pairs
