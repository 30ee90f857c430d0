"""Export a zoo convnet's Grad-CAM graph into a model repository as `<model>_gradcam`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import GRADCAM_SUFFIX, PREPROCESSING_KEY
from zoo import get_model_spec

from .config import ExportConfig
from .errors import ExportError
from .gradcam import GRADCAM_INPUTS, GRADCAM_OUTPUTS, GradCAM, last_conv_layer
from .gradients import GradientObjective, gradient_graph
from .pipeline import ExportResult, export_graph
from .pixels import PixelInput, as_encoded_config, as_pixel_config, pixel_cases, pixel_form
from .repository import LABELS_FILE, serving_config
from .validate import ValidationReport, validate_onnx
from .weights import prepared_model
from .zoo_models import _classes, _labels, _picture_shape, _preprocessing, _takes_pictures, picture_format

__all__ = ["export_gradcam", "GRADCAM_SUFFIX"]


class _Objective(GradientObjective):
    """Grad-CAM with the graph's signature (class_index as (B, 1)); with `pixels`, the images
    come as (B, H, W, C) uint8 and are scaled and normalised first, as a uint8 graph does."""

    def __init__(self, cam: GradCAM, pixels: PixelInput | None = None) -> None:
        super().__init__()
        self.cam = cam
        self.pixels = pixels

    def weights(self) -> dict[str, torch.Tensor]:
        return self.cam.weights()

    def graph_function(self, weights: dict[str, torch.Tensor], images: torch.Tensor, class_index: torch.Tensor):
        if self.pixels is not None:
            images = self.pixels.model_input(images)
        return self.cam.graph_function(weights, images, class_index.reshape(-1))


def export_gradcam(
    name: str,
    repository: str | Path,
    *,
    weights: str | Path | None = None,
    layer: str | None = None,
    score: str = "probability",
    max_batch_size: int = 64,
    version: int | None = None,
    options: Mapping[str, Any] | None = None,
    pixels: str = "float32",
) -> ExportResult:
    """Add `<name>_gradcam` to `repository`: images and class_index (B, 1) int64, -1 for the
    top class, in; scores, activations, gradients and heatmap out. The heatmaps are checked
    against PyTorch autograd on the same weights within 1e-4 of their maximum.

    pixels="uint8" or "encoded": `<name>_uint8_gradcam` / `<name>_encoded_gradcam`, beside the
    model's own graph of that form, taking pixels or picture files as it does."""
    start = time.perf_counter()
    get_model_spec(name)  # KeyError naming the known models
    model = prepared_model(name, weights, options, what="Grad-CAM", consequence="its heatmaps are meaningless")
    cam = GradCAM(model, layer or last_conv_layer(model), score)
    preprocessing = _preprocessing(name, model)
    pixel_input = None
    if pixels != "float32":
        if preprocessing is None or not _takes_pictures(name, model, preprocessing):
            raise ExportError(f"{name} does not take pictures: its Grad-CAM graph has no {pixels} form")
        pixel_input = PixelInput(torch.nn.Identity(), preprocessing)
    objective = _Objective(cam, pixel_input)
    shape = _picture_shape(name, model)
    rng = np.random.default_rng(0)
    pictures = (
        [case[0] for case in pixel_cases(preprocessing, (1, 5))]
        if pixel_input is not None and preprocessing is not None
        else [rng.random((batch, *shape), dtype=np.float32) for batch in (1, 5)]
    )
    cases = [(images, rng.integers(-1, 2, (len(images), 1))) for images in pictures]  # mixed classes, -1 = top
    example = [torch.from_numpy(a[:2]) for a in (cases[1][0], cases[1][1])]
    config = ExportConfig(
        input_names=GRADCAM_INPUTS,
        output_names=GRADCAM_OUTPUTS,
        dynamic_axes=((0,), (0,)),
        # Within 1e-4 of each output's largest value; atol only covers outputs that are all but
        # zero (a saturated class score leaves gradients of 1e-20).
        max_batch_size=max_batch_size,
        validation_batch_sizes=(1, 5),
        atol=1e-7,
        rtol=1e-4,
    )
    gradcam_name = name + ("" if pixels == "float32" else f"_{pixels}") + GRADCAM_SUFFIX
    labels = _labels(name, _classes(name, Path(weights) if weights else None))
    if pixel_input is not None and preprocessing is not None:
        preprocessing = pixel_form(preprocessing, pixels)
    metadata = {"model": gradcam_name, "layer": cam.layer, "score": cam.score, "labels": list(labels)}
    if preprocessing is not None:
        metadata["preprocessing"] = preprocessing.to_json()

    def validate(onnx_file: Path) -> ValidationReport:
        # Where max pooling sees equal values (often zeros after ReLU), PyTorch and onnxruntime
        # route the gradient to different ones of them, and through later ReLU masks the
        # gradients can differ where the heatmap does not. Scores, activations and heatmaps
        # are held to 1e-4 of their maximum; gradients are checked through their per-channel
        # means (Grad-CAM's weights), to 1e-2 of the largest.
        report = validate_onnx(objective, onnx_file, cases, config, reductions={"gradients": None})
        validate_onnx(
            objective,
            onnx_file,
            cases,
            dataclasses.replace(config, rtol=1e-2),
            reductions={
                "gradients": lambda g: g.mean(axis=(2, 3)),
                "scores": None,
                "activations": None,
                "heatmap": None,
            },
        )
        return report

    with torch.no_grad():
        outputs = objective(*example)
    model_config = serving_config(gradcam_name, max_batch_size)
    model_config.input.add(name="images", data_type=mc.TYPE_FP32, format=picture_format(model), dims=shape)
    model_config.input.add(name="class_index", data_type=mc.TYPE_INT64, dims=[1])
    if pixels == "uint8" and preprocessing is not None:
        as_pixel_config(model_config, preprocessing, PREPROCESSING_KEY)
    elif pixels == "encoded" and preprocessing is not None:
        as_encoded_config(model_config, preprocessing, PREPROCESSING_KEY)
    for output_name, tensor in zip(GRADCAM_OUTPUTS, outputs):
        labelled = output_name == "scores" and tuple(tensor.shape[1:]) == (len(labels),)
        model_config.output.add(
            name=output_name,
            data_type=mc.TYPE_FP32,
            dims=tensor.shape[1:],
            label_filename=LABELS_FILE if labelled else "",
        )
    graph = gradient_graph(model_config, objective, example, config, cases, metadata, validate=validate, labels=labels)
    return export_graph(graph, repository, version=version, started=start)
