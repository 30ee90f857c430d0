"""Export a registered zoo model: build, load weights, export, validate, add to a repository."""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from serving.classify import PREPROCESSING_PARAMETER
from serving.grpc._generated import model_config_pb2 as mc
from zoo import get_model, get_model_spec
from zoo.datasets import dataset_info
from zoo.recipes import load_weights

from .config import ExportConfig
from .onnx import export_onnx
from .repository import LABELS_FILE, add_to_repository
from .validate import ValidationReport, validate_onnx

__all__ = ["ExportResult", "UntrainedWeightsWarning", "export_model", "model_config_for"]


class UntrainedWeightsWarning(UserWarning):
    """A model was exported with freshly initialised weights: fine for benchmarks, useless for predictions."""


@dataclass(frozen=True)
class ExportResult:
    name: str
    version_dir: Path
    validation: ValidationReport
    seconds: float


def model_config_for(name: str, config: ExportConfig, output_dims: tuple[int, ...]) -> mc.ModelConfig:
    """The config.pbtxt of a zoo image classifier."""
    spec = get_model_spec(name)
    info = dataset_info(spec.dataset)
    model_config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=config.max_batch_size)
    image_like = len(spec.input_shape) == 3
    model_config.input.add(
        name=config.input_names[0],
        data_type=mc.TYPE_FP32,
        format=mc.ModelInput.FORMAT_NCHW if image_like else mc.ModelInput.FORMAT_NONE,
        dims=spec.input_shape,
    )
    model_config.output.add(name=config.output_names[0], data_type=mc.TYPE_FP32, dims=output_dims, label_filename=LABELS_FILE)
    model_config.parameters[PREPROCESSING_PARAMETER].string_value = info.preprocessing.to_json()
    return model_config


def export_model(
    name: str,
    repository: str | Path,
    *,
    weights: str | Path | None = None,
    config: ExportConfig = ExportConfig(),
    version: int | None = None,
) -> ExportResult:
    """Export zoo model `name` (trained `weights`, or fresh ones with a warning) into `repository`."""
    start = time.perf_counter()
    spec = get_model_spec(name)
    info = dataset_info(spec.dataset)
    model = get_model(name)
    if weights is None:
        warnings.warn(
            f"exporting {name} with freshly initialised weights (no weights file given): its predictions are meaningless",
            UntrainedWeightsWarning,
            stacklevel=2,
        )
    else:
        load_weights(model, weights)
    model.eval()
    example = torch.zeros((2, *spec.input_shape))
    with torch.no_grad():
        output_dims = tuple(model(example).shape[1:])
    metadata = {
        "model": name,
        "weights": Path(weights).name if weights else "untrained",
        "labels": list(info.classes),
        "preprocessing": info.preprocessing.to_json(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        export_onnx(model, (example,), onnx_file, config, metadata)
        report = validate_onnx(model, onnx_file, (spec.input_shape,), config)
        version_dir = add_to_repository(
            Path(repository), model_config_for(name, config, output_dims), onnx_file, labels=info.classes, version=version
        )
    return ExportResult(name, version_dir, report, time.perf_counter() - start)
