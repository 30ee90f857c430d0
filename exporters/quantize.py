"""int8 variants of zoo models: onnxruntime's quantizer applied to the float export, and the
result held against the float model on held-out real data before it joins a repository.

Two methods, chosen by what the model is:

- static (convolutional and dense picture models): QDQ format, int8 weights per output
  channel, uint8 activations whose ranges are calibrated (MinMax) on real samples of the
  model's training data, so every Conv and MatMul runs on integers;
- dynamic (models with recurrent layers or word-index inputs): int8 weights, activations
  quantized per batch at run time; LSTM, GRU and the embedding lookups keep their float
  state arithmetic, which static ranges cannot describe.

The export is refused when the int8 model's held-out accuracy falls more than
`max_accuracy_drop` points below the float model's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils.data import Dataset

from serving.protocol.labels import read_labels
from serving.protocol.model_config import read_config
from serving.protocol.preprocessing import ImagePreprocessing
from serving.protocol.schema import encode_fact
from zoo import get_model_spec
from zoo.datasets import DatasetError, SupervisedData, load_dataset
from zoo.recipes.evaluate import fit_input

from .errors import ExportError
from .onnx import METADATA_PREFIX
from .pipeline import ExportResult
from .repository import LABELS_FILE, add_to_repository
from .zoo_models import export_model

__all__ = [
    "QuantizationReport",
    "add_quantized",
    "quantize_and_add",
    "export_quantized",
    "quantization_method",
    "quantize_file",
    "QUANTIZATION_KEY",
]

QUANTIZATION_KEY = "deepr.quantization"
"""The method and the held-out comparison with the float model (QuantizationReport JSON)."""

EVALUATION_LIMIT = 2000
"""Held-out samples compared at most (the whole test split of the embedded data sets)."""


def quantization_method(model: nn.Module, input_dtype: str = "float32") -> str:
    """ "dynamic" for recurrent or word-index models, else "static"."""
    recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
    return "dynamic" if recurrent or input_dtype == "int64" else "static"


@dataclass(frozen=True)
class QuantizationReport:
    method: str
    """How the graph was quantized, in words."""
    calibration_samples: int
    held_out_samples: int
    float_accuracy: float
    int8_accuracy: float
    agreement: float
    """Share of held-out samples on which the two models predict the same class."""

    @property
    def accuracy_drop(self) -> float:
        """Points of accuracy lost (negative: the int8 model did better)."""
        return 100 * (self.float_accuracy - self.int8_accuracy)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "accuracy_drop": round(self.accuracy_drop, 3)})

    def describe(self) -> str:
        return (
            f"{self.method}; held-out accuracy {self.float_accuracy:.4f} float vs {self.int8_accuracy:.4f} int8 "
            f"({abs(self.accuracy_drop):.2f} points {'lost' if self.accuracy_drop >= 0 else 'gained'}), same top "
            f"class on {100 * self.agreement:.1f}% of "
            f"{self.held_out_samples} samples"
        )


class _Calibration:
    """onnxruntime's CalibrationDataReader over batches of real inputs."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _drop_preprocessing_advice(record: logging.LogRecord) -> bool:
    """The dynamic quantizer advises the static method's pre-processing on every call."""
    return "pre-processing before quantization" not in record.getMessage()


def quantize_file(float_file: Path, int8_file: Path, *, method: str, calibration: np.ndarray | None = None) -> str:
    """Quantize `float_file` into `int8_file`; returns the method in words. Static needs
    `calibration`, a batch of real inputs (first axis: samples)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method == "dynamic":
        logging.getLogger().addFilter(_drop_preprocessing_advice)
        graph = onnx.load(str(float_file))
        # torch.onnx records intermediate shapes from its example (one sequence length); the
        # quantizer re-infers them and stops at the first disagreement, so they go.
        del graph.graph.value_info[:]
        try:
            quantize_dynamic(graph, int8_file, weight_type=QuantType.QInt8, per_channel=False)
        finally:
            logging.getLogger().removeFilter(_drop_preprocessing_advice)
        return "dynamic: int8 weights, activations quantized per batch at run time"
    if method != "static":
        raise ValueError(f"method must be 'static' or 'dynamic', got {method!r}")
    if calibration is None or len(calibration) == 0:
        raise ValueError("static quantization needs calibration samples")
    prepared = int8_file.with_name("prepared.onnx")
    quant_pre_process(float_file, prepared, skip_symbolic_shape=True)  # shapes and folded constants first
    input_name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    batches = [calibration[i : i + 32] for i in range(0, len(calibration), 32)]
    quantize_static(
        prepared,
        int8_file,
        _Calibration(input_name, batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink()
    return (
        f"static QDQ: int8 weights per channel, uint8 activations calibrated (MinMax) on {len(calibration)} "
        "training samples"
    )


def _inputs(data: Dataset, count: int, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` (inputs, labels) of `data`, a seeded random choice, shaped as the model takes them."""
    spec = get_model_spec(name)
    size = len(data)  # type: ignore[arg-type]  # every zoo dataset has a length
    order = np.random.default_rng(seed).permutation(size)[: min(count, size)]
    xs, ys = zip(*(data[int(i)] for i in order))
    x = fit_input(torch.stack(list(xs)), spec.input_shape).numpy()
    return x, np.asarray([int(y) for y in ys], np.int64)


def _as_pixels(x: np.ndarray, preprocessing: ImagePreprocessing) -> np.ndarray:
    """Float model inputs (N, C, H, W) back to the uint8 pixels (N, H, W, C) a pixel graph takes."""
    channels = x.shape[1]
    std = np.asarray(preprocessing.std or (1.0,) * channels, np.float32).reshape(1, -1, 1, 1)
    mean = np.asarray(preprocessing.mean or (0.0,) * channels, np.float32).reshape(1, -1, 1, 1)
    pixels = np.rint((x * std + mean) / preprocessing.scale)
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _predictions(session: ort.InferenceSession, x: np.ndarray, task: str) -> np.ndarray:
    name = session.get_inputs()[0].name
    outputs = np.concatenate([session.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    return (outputs.reshape(-1) > 0.5).astype(np.int64) if task == "binary" else outputs.argmax(1)


def export_quantized(
    name: str,
    repository: str | Path,
    *,
    weights: str | Path | None = None,
    data: SupervisedData | None = None,
    calibration: int = 256,
    max_accuracy_drop: float | None = 1.0,
    pixels: str = "float32",
    max_batch_size: int = 256,
    version: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[ExportResult, QuantizationReport]:
    """Add `<name>_int8` (`<name>_int8_uint8` with pixels="uint8") to `repository`.

    `data`: where the calibration samples (training split) and the held-out comparison
    (test split) come from; default the model's embedded dataset. `max_accuracy_drop`:
    points of held-out accuracy the int8 model may lose (None: report, never refuse).
    """
    start = time.perf_counter()
    spec = get_model_spec(name)
    if calibration < 1:
        raise ValueError(f"calibration must be at least 1 sample, got {calibration}")
    if not spec.dataset:
        raise ExportError(
            f"{name} is an imported Keras model: int8 calibrates on the zoo's datasets in the zoo's layouts, "
            "which it does not take; export it as fp32 or --precision fp16"
        )
    if data is None:
        try:
            data = load_dataset(spec.dataset)
        except DatasetError as exc:
            raise ExportError(f"{name} has no embedded data to calibrate int8 ranges and compare on: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        float_result = export_model(
            name,
            Path(tmp) / "float",
            weights=weights,
            max_batch_size=max_batch_size,
            options=options,
            pixels=pixels,
        )
        import zoo

        with torch.device("meta"):  # the layers' kinds only: no memory, no weights
            method = quantization_method(zoo.get_model(name), spec.input_dtype)
        calibration_x, _ = _inputs(data.train, calibration, name, seed=0)
        held_out_x, labels = _inputs(data.test, EVALUATION_LIMIT, name, seed=1)
        if pixels == "uint8":
            preprocessing = data.preprocessing or ImagePreprocessing((calibration_x.shape[2], calibration_x.shape[3]))
            calibration_x, held_out_x = _as_pixels(calibration_x, preprocessing), _as_pixels(held_out_x, preprocessing)
        version_dir, report = quantize_and_add(
            name,
            float_result.version_dir,
            repository,
            f"{name}_int8" + ("_uint8" if pixels == "uint8" else ""),
            method=method,
            calibration=calibration_x,
            held_out=(held_out_x, labels),
            task=spec.task,
            max_accuracy_drop=max_accuracy_drop,
            version=version,
        )
    # The float graph's parity with PyTorch; the int8 graph's own check is the report.
    return ExportResult(
        version_dir.parent.name, version_dir, float_result.validation, time.perf_counter() - start
    ), report


def quantize_and_add(
    name: str,
    float_dir: Path,
    repository: str | Path,
    int8_name: str,
    *,
    method: str,
    calibration: np.ndarray,
    held_out: tuple[np.ndarray, np.ndarray],
    task: str,
    max_accuracy_drop: float | None,
    version: int | None,
) -> tuple[Path, QuantizationReport]:
    """Quantize the float graph in `float_dir`, compare both on `held_out` (inputs, labels),
    and add the int8 graph to `repository` as `int8_name`, unless it loses more than
    `max_accuracy_drop` points of accuracy. Returns its version folder and the comparison."""
    float_file = float_dir / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        int8_file = Path(tmp) / "model.onnx"
        try:
            described = quantize_file(float_file, int8_file, method=method, calibration=calibration)
        except Exception as exc:  # the quantizer raises plain exceptions for graphs it cannot take
            raise ExportError(f"onnxruntime cannot quantize {name} ({method}): {exc}") from exc
        report = _compare(float_file, int8_file, *held_out, task, described, len(calibration))
        if max_accuracy_drop is not None and report.accuracy_drop > max_accuracy_drop:
            raise ExportError(
                f"{name} loses {report.accuracy_drop:.2f} points of held-out accuracy as int8 "
                f"({report.float_accuracy:.4f} -> {report.int8_accuracy:.4f} on {report.held_out_samples} held-out "
                f"samples), more than --max-accuracy-drop {max_accuracy_drop:g}: it is not added"
            )
        _write_metadata(int8_file, float_file, report)
        version_dir = add_quantized(float_dir.parent, int8_file, repository, int8_name, report=report, version=version)
    return version_dir, report


def add_quantized(
    float_dir: Path,
    int8_file: Path,
    repository: str | Path,
    name: str,
    *,
    report: QuantizationReport | None = None,
    version: int | None = None,
) -> Path:
    """Add `int8_file` to `repository` as `name`, with the float model's config and labels
    (from its folder `float_dir`), precision int8 and the comparison when there is one."""
    config = read_config(float_dir)
    config.name = name
    config.parameters[METADATA_PREFIX + "precision"].string_value = "int8"
    if report is not None:
        config.parameters[QUANTIZATION_KEY].string_value = report.to_json()
    labels_file = float_dir / LABELS_FILE
    labels = read_labels(labels_file) if labels_file.is_file() else None
    return add_to_repository(Path(repository), config, int8_file, labels=labels, version=version)


def _compare(
    float_file: Path,
    int8_file: Path,
    x: np.ndarray,
    labels: np.ndarray,
    task: str,
    method: str,
    calibration_samples: int,
) -> QuantizationReport:
    providers = ["CPUExecutionProvider"]  # where int8 kernels are measured, whatever serves the model later
    float_predictions = _predictions(ort.InferenceSession(str(float_file), providers=providers), x, task)
    int8_predictions = _predictions(ort.InferenceSession(str(int8_file), providers=providers), x, task)
    return QuantizationReport(
        method=method,
        calibration_samples=calibration_samples if method.startswith("static") else 0,
        held_out_samples=len(x),
        float_accuracy=float((float_predictions == labels).mean()),
        int8_accuracy=float((int8_predictions == labels).mean()),
        agreement=float((float_predictions == int8_predictions).mean()),
    )


def _write_metadata(onnx_file: Path, float_file: Path, report: QuantizationReport) -> None:
    """The float graph's facts (labels, preprocessing...) with the precision and the report."""
    graph = onnx.load(str(onnx_file))
    facts = {p.key: p.value for p in onnx.load(str(float_file)).metadata_props}
    facts[METADATA_PREFIX + "precision"] = "int8"
    facts[QUANTIZATION_KEY] = encode_fact(report.to_json())
    del graph.metadata_props[:]
    for key, value in facts.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(onnx_file))
