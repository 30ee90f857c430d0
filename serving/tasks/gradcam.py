"""Grad-CAM heatmaps from an exported `<model>_gradcam` graph: in-process with onnxruntime,
or through a deepr (or any V2) server. numpy, Pillow and matplotlib's colour maps only.

    heatmaps = LocalGradCAM("models/mnist_convnet_gradcam/1/model.onnx")(["digit.png"])
    heatmaps = gradcam(["cat.jpg"], "catsdogs_convnet_gradcam", url="localhost:8001")
    overlay(Image.open("cat.jpg"), heatmaps[0].heatmap).save("heat.png")
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, Placement, load_image
from serving.protocol.schema import LABELS_KEY, LAYER_KEY, PREPROCESSING_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = ["LABELS_KEY", "GradCAM", "GradCAMResult", "LocalGradCAM", "ServedGradCAM", "gradcam", "overlay", "TOP_CLASS"]

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


def frame_taper(frame: tuple[int, int]) -> np.ndarray:
    """(height, width) weights over a framed input: 1 over the middle, where MNIST framing puts
    the digit (20 of 28 pixels), falling smoothly to 0 across the margin around it, so that a
    heatmap mapped back onto the picture fades out instead of ending in the frame's rectangle.
    The zoo page applies the same weights."""

    def ramp(n: int) -> np.ndarray:
        margin = 4 * n / 28
        distance = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5)  # to the nearer edge
        t = np.clip(distance / margin, 0, 1)
        return t * t * (3 - 2 * t)  # smoothstep

    width, height = frame
    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def _placed(heatmap: np.ndarray, size: tuple[int, int], placement: Placement, frame: tuple[int, int]) -> np.ndarray:
    """A heatmap over a framed input, mapped back onto the picture the frame was cut from
    (fading to zero at the frame's edge, and zero outside it)."""
    over_frame = Image.fromarray(_upsample(heatmap, frame) * frame_taper(frame), mode="F")
    left, top, right, bottom = placement.frame_to_picture(frame)
    # The affine map sends each picture pixel to the frame pixel that shows it.
    sx, sy = frame[0] / (right - left), frame[1] / (bottom - top)
    mapped = over_frame.transform(
        size, Image.Transform.AFFINE, (sx, 0, -left * sx, 0, sy, -top * sy), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(mapped)


def _results(
    pictures: list[Image.Image],
    scores: np.ndarray,
    heatmaps: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
    placements: Sequence[Placement | None],
    frame: tuple[int, int],
) -> list[GradCAMResult]:
    out = []
    for picture, row, heat, requested, placement in zip(pictures, scores, heatmaps, classes.reshape(-1), placements):
        index = int(row.argmax()) if requested < 0 else int(requested)
        label = labels[index] if index < len(labels) else str(index)
        shown = _upsample(heat, picture.size) if placement is None else _placed(heat, picture.size, placement, frame)
        out.append(GradCAMResult(shown, heat, index, label, float(row[index])))
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


class GradCAM(GraphTask):
    """Heatmaps from an exported Grad-CAM graph, with the model's scores and labels."""

    kind = "Grad-CAM graph"
    export_hint = "deepr export NAME --gradcam"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(PREPROCESSING_KEY) or "heatmap" not in graph.outputs:
            raise self.refuse()
        self.preprocess = ImagePreprocessing.from_json(graph.fact(PREPROCESSING_KEY))
        if self.preprocess.pixels == "encoded" and isinstance(graph, LocalGraph):
            # no server here to decode the files: decode them as it would
            self.preprocess = replace(self.preprocess, pixels="uint8")
        self.labels: list[str] = graph.fact(LABELS_KEY, [])
        self.layer: str = graph.fact(LAYER_KEY, "")

    def __call__(
        self,
        images: Sequence[ImageInput],
        class_index: int | Sequence[int] | None = None,
        invert: str = "auto",
        framing: str = "auto",
    ) -> list[GradCAMResult]:
        """`class_index` None (or -1) means each image's top class; `invert`: for digit
        models, pictures drawn dark on light are inverted (auto, yes, no); `framing`: "none"
        resizes whole pictures for a model that frames them. A heatmap over a framed digit
        is mapped back onto the picture where the digit was found."""
        pictures = [load_image(i) for i in images]
        num_classes = self.graph.item_shape("scores")[0]
        classes = _class_column(len(pictures), class_index, num_classes)
        # a graph served behind picture files gets the files themselves, as the caller has them
        sources = images if self.preprocess.pixels == "encoded" else pictures
        outputs = self.graph.run(
            {"images": self.preprocess(sources, invert, framing), "class_index": classes}, outputs=["scores", "heatmap"]
        )
        placements = [self.preprocess.placement(p, invert, framing) for p in pictures]
        height, width = self.preprocess.size
        return _results(
            pictures, outputs["scores"], outputs["heatmap"], classes, self.labels, placements, (width, height)
        )


class LocalGradCAM(GradCAM):
    """Runs an exported Grad-CAM graph in this process (CUDA when usable, else CPU)."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="Grad-CAM model"))


class ServedGradCAM(GradCAM):
    """A Grad-CAM graph on a V2 server."""

    def __init__(self, model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None) -> None:
        super().__init__(ServedGraph(model, url=url, client=client))


def gradcam(
    images: Sequence[ImageInput],
    model: str,
    *,
    url: str = DEFAULT_URL,
    class_index: int | Sequence[int] | None = None,
    client: InferenceClient | None = None,
    invert: str = "auto",
    framing: str = "auto",
) -> list[GradCAMResult]:
    """One call of a ServedGradCAM."""
    with ServedGradCAM(model, url=url, client=client) as cam:
        return cam(images, class_index, invert, framing)


def overlay(picture: ImageInput, heatmap: np.ndarray, *, alpha: float = 0.8, colormap: str = "jet") -> Image.Image:
    """The picture with the [0, 1] heatmap over it in a colour map whose opacity follows the
    square of the heat: `alpha` where it peaks, a quarter of that at half the peak, the picture
    itself where there is none, so what the model looked at stands out instead of a wash of
    colour over everything (the zoo page draws it the same way)."""
    from matplotlib import colormaps  # colour tables only; no figure is drawn

    base = load_image(picture).convert("RGB")
    if heatmap.shape != (base.height, base.width):
        heatmap = _upsample(heatmap, base.size)
    heat = np.clip(heatmap, 0, 1)
    colours = colormaps[colormap](heat)[..., :3] * 255
    weight = (alpha * heat**2)[..., None]
    blended = np.asarray(base, np.float32) * (1 - weight) + colours * weight
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
