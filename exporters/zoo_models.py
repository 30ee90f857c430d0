"""Export a registered zoo model: build, load weights, export, validate, add to a repository."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.preprocessing import PIXEL_FORMS, ImagePreprocessing
from serving.protocol.schema import LABELS_KEY, PREPROCESSING_KEY, SECTION_KEY
from zoo import get_model_spec
from zoo.datasets import dataset_info

from .config import ExportConfig
from .errors import ExportError
from .pipeline import ExportResult, GraphExport, export_graph
from .pixels import PixelInput, as_encoded_config, as_pixel_config, pixel_cases, pixel_form
from .repository import LABELS_FILE, serving_config
from .weights import prepared_model

__all__ = ["export_model", "model_config_for"]


def _input_shape(name: str, model: torch.nn.Module) -> tuple[int | None, ...]:
    """The built model's own input shape (bases built with input_shape=...), else the registered one."""
    return tuple(getattr(model, "input_shape", get_model_spec(name).input_shape))


def _picture_shape(name: str, model: torch.nn.Module) -> tuple[int, ...]:
    """A picture model's (C, H, W): gradient and feature graphs are exported for one size."""
    shape = _input_shape(name, model)
    fixed = tuple(d for d in shape if d is not None)
    if len(fixed) != len(shape):
        raise ValueError(f"{name} takes inputs of varying size {shape}: build it with a fixed input_shape")
    return fixed


def _preprocessing(name: str, model: torch.nn.Module) -> ImagePreprocessing | None:
    """What the weights expect (pretrained bases carry it), else the dataset's."""
    dataset = get_model_spec(name).dataset
    return getattr(model, "preprocessing", None) or (dataset_info(dataset).preprocessing if dataset else None)


def _takes_pictures(name: str, model: torch.nn.Module, preprocessing: ImagePreprocessing | None) -> bool:
    """A (C, H, W) picture input (or (H, W, C), for an imported Keras model that keeps
    Keras' layout) with preprocessing that makes it (not a flattened one)."""
    shape = _input_shape(name, model)
    channels = shape[-1] if getattr(model, "input_layout", None) == "NHWC" else shape[0]
    return preprocessing is not None and len(shape) == 3 and channels in (1, 3)


def picture_format(model: torch.nn.Module) -> int:
    """The config's format of a picture input: NCHW, or NHWC for a model that takes Keras' layout."""
    return mc.ModelInput.FORMAT_NHWC if getattr(model, "input_layout", None) == "NHWC" else mc.ModelInput.FORMAT_NCHW


def model_config_for(
    name: str,
    model: torch.nn.Module,
    config: ExportConfig,
    output_dims: tuple[int, ...],
    labels: Sequence[str] | None,
) -> mc.ModelConfig:
    """The config.pbtxt of a zoo model; with `labels`, its output has a labels file, and the
    names are a parameter too, for clients that cannot read the repository (the zoo page)."""
    spec = get_model_spec(name)
    shape = _input_shape(name, model)
    preprocessing = _preprocessing(name, model)
    model_config = serving_config(name, config.max_batch_size)
    image = _takes_pictures(name, model, preprocessing)
    model_config.input.add(
        name=config.input_names[0],
        data_type=mc.TYPE_INT64 if spec.input_dtype == "int64" else mc.TYPE_FP32,
        format=picture_format(model) if image else mc.ModelInput.FORMAT_NONE,
        dims=[-1 if d is None else d for d in shape],
    )
    model_config.output.add(
        name=config.output_names[0],
        data_type=mc.TYPE_FP32,
        dims=output_dims,
        label_filename=LABELS_FILE if labels else "",
    )
    if preprocessing is not None:  # also for nets that take the picture flattened (mnist_dense)
        model_config.parameters[PREPROCESSING_KEY].string_value = preprocessing.to_json()
    model_config.parameters[SECTION_KEY].string_value = spec.section
    if labels:
        model_config.parameters[LABELS_KEY].string_value = json.dumps(list(labels))
    return model_config


def _classes(name: str, weights: Path | None) -> tuple[str, ...]:
    """The classes the weights were trained on (metrics.json beside them, written by
    `train`), else those of the model's default dataset."""
    metrics = weights.parent / "metrics.json" if weights is not None else None
    if metrics is not None and metrics.is_file():
        classes = json.loads(metrics.read_text()).get("classes")
        if classes:
            return tuple(classes)
    spec = get_model_spec(name)
    return spec.classes or dataset_info(spec.dataset).classes


def _labels(name: str, classes: tuple[str, ...]) -> tuple[str, ...]:
    """One label per output element: every class, or for a binary model the positive class."""
    return classes[-1:] if get_model_spec(name).task == "binary" else classes


def _validation_cases(model: torch.nn.Module, name: str, config: ExportConfig) -> list[tuple[np.ndarray, ...]]:
    """Random inputs at every validation batch size (and sequence length, for free dimensions)."""
    spec = get_model_spec(name)
    input_shape = _input_shape(name, model)
    rng = np.random.default_rng(0)
    vocabulary = next((m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)), 2)
    lengths = config.validation_lengths if None in input_shape else (0,)
    cases: list[tuple[np.ndarray, ...]] = []
    for batch in config.validation_batch_sizes:
        for length in lengths:
            shape = (batch, *(length if d is None else d for d in input_shape))
            array = (
                rng.integers(0, vocabulary, shape)
                if spec.input_dtype == "int64"
                else rng.random(shape, dtype=np.float32)
            )
            cases.append((array,))
    return cases


def export_model(
    name: str,
    repository: str | Path,
    *,
    weights: str | Path | None = None,
    max_batch_size: int = 256,
    version: int | None = None,
    options: Mapping[str, Any] | None = None,
    precision: str = "fp32",
    pixels: str = "float32",
) -> ExportResult:
    """Export zoo model `name` (trained `weights`, or fresh ones with a warning) into `repository`.

    precision="fp16" stores weights and computes in float16 (inputs and outputs stay float32,
    so clients do not change) as `<name>_fp16`, checked against PyTorch's float32 outputs
    within 1e-2 of each output's largest value.

    pixels="uint8" (image models) exports a graph that takes resized pixels as they are,
    (N, H, W, C) uint8, and scales and normalises them itself, as `<name>_uint8`: requests
    carry a quarter of the bytes, and clients that read the config (classify) adapt.
    pixels="encoded" serves that graph as `<name>_encoded` behind a BYTES input of picture
    files, (N, 1): the server decodes and resizes them with the model's preprocessing.

    Input/output names, dynamic axes and the exporter come from the model's
    registry entry; the graph is checked against PyTorch at two batch sizes
    (and two sequence lengths where the length is free) before it is added.
    `options` go to the model's builder (include_top, input_shape, ...).
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if pixels not in PIXEL_FORMS:
        raise ValueError(f"pixels must be one of {PIXEL_FORMS}, got {pixels!r}")
    spec = get_model_spec(name)
    config = ExportConfig(max_batch_size=max_batch_size, **spec.export)
    model = prepared_model(name, weights, options, consequence="its predictions are meaningless")
    preprocessing = _preprocessing(name, model)
    float_model = model
    if pixels != "float32":
        if not _takes_pictures(name, model, preprocessing):
            raise ExportError(
                f"{name} does not take pictures (input {_input_shape(name, model)}): it has no {pixels} form"
            )
        assert preprocessing is not None  # _takes_pictures says a picture model has it
        model = PixelInput(model, preprocessing).eval()
        cases: list[tuple[np.ndarray, ...]] = list(pixel_cases(preprocessing, config.validation_batch_sizes))
        preprocessing = pixel_form(preprocessing, pixels)
    else:
        cases = _validation_cases(model, name, config)
    example = torch.from_numpy(cases[-1][0][:2])  # torch.export would fix a size of 1
    with torch.no_grad():
        output_dims = tuple(model(example).shape[1:])
    classes = _labels(name, _classes(name, Path(weights) if weights else None))
    labels: tuple[str, ...] | None = classes
    if output_dims != (len(classes),):  # a base without its top: its output is features, not classes
        labels = None
        if config.output_names == ExportConfig.output_names:
            config = dataclasses.replace(config, output_names=("features",))
    metadata = {
        "model": name,
        "weights": Path(weights).name if weights else "untrained",
        **({"labels": list(labels)} if labels else {}),
        **({"preprocessing": preprocessing.to_json()} if preprocessing else {}),
    }
    encoding_file = Path(weights).parent / "text_encoding.json" if weights else None
    text_encoding = encoding_file.read_text() if encoding_file is not None and encoding_file.is_file() else None
    if text_encoding is not None:
        metadata["text_encoding"] = text_encoding
    served_name = name + ("_fp16" if precision == "fp16" else "") + ("" if pixels == "float32" else f"_{pixels}")
    if precision == "fp16":
        config = dataclasses.replace(config, atol=1e-3, rtol=1e-2)  # float16 keeps about 3 decimal digits
    model_config = model_config_for(name, float_model, config, output_dims, labels)
    if pixels == "uint8" and preprocessing is not None:
        as_pixel_config(model_config, preprocessing, PREPROCESSING_KEY)
    elif pixels == "encoded" and preprocessing is not None:
        as_encoded_config(model_config, preprocessing, PREPROCESSING_KEY)
    model_config.name = served_name
    graph = GraphExport(
        model_config,
        model,
        (example,),
        config,
        cases,
        {**metadata, "precision": precision, "pixels": pixels},
        labels=labels,
        convert=_to_float16 if precision == "fp16" else None,
    )
    return export_graph(graph, repository, version=version, started=start)


PRECISIONS = ("fp32", "fp16")


def _to_float16(onnx_file: Path) -> None:
    """Weights and arithmetic in float16, with casts at the graph's inputs and outputs
    (onnxruntime's own converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(onnx.load(str(onnx_file)), keep_io_types=True)
    except Exception as exc:  # the converter raises plain exceptions for graphs it cannot take
        raise ExportError(f"cannot convert {onnx_file.name} to float16: {exc}") from exc
    onnx.save(converted, str(onnx_file))
