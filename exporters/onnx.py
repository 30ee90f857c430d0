"""The one place that calls torch.onnx.export."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import onnx
import torch
from torch import nn

from serving.protocol.schema import encode_fact

from .config import ExportConfig
from .errors import ExportError

__all__ = ["export_onnx", "METADATA_PREFIX"]

METADATA_PREFIX = "deepr."

_EXPORTING = threading.Lock()
"""One torch.onnx.export at a time: torch.export is not thread-safe, and the translation
table below is swapped in for the length of one call."""
_TRANSLATION_TABLES: dict[Any, Any] = {}
"""torch.onnx's table of ATen-to-ONNX translations, built once per opset."""


@functools.cache
def _torch_registry() -> tuple[Any, Any, inspect.Signature] | None:
    """(ONNXRegistry, its from_torchlib classmethod, that method's signature), or None where
    torch's private registry is not laid out as _translation_table_built_once expects."""
    try:
        from torch.onnx._internal.exporter import _registration

        registry_type = _registration.ONNXRegistry
        original = registry_type.__dict__["from_torchlib"]
        empty = registry_type()
        if not (isinstance(empty.functions, dict) and hasattr(empty, "_opset_version")):
            return None
        return registry_type, original, inspect.signature(original.__func__)
    except (ImportError, AttributeError, KeyError):
        return None


@contextlib.contextmanager
def _translation_table_built_once() -> Iterator[None]:
    """torch.onnx.export builds its table of ATen-to-ONNX translations anew on every call:
    0.8-0.9 s on 2 cores, a third of a small model's export. Inside this block each call gets
    a copy of one table kept per opset (a copy: custom translations are added to it). The
    table is torch's private ONNXRegistry; where its layout is not the one this expects,
    nothing is swapped and torch builds the table itself."""
    found = _torch_registry()
    if found is None:
        yield
        return
    registry_type, original, signature = found

    def from_torchlib(cls: type, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(cls, *args, **kwargs)
        bound.apply_defaults()
        key = tuple(bound.arguments.values())[1:]
        if key not in _TRANSLATION_TABLES:
            _TRANSLATION_TABLES[key] = original.__func__(cls, *args, **kwargs)
        table = _TRANSLATION_TABLES[key]
        copy = cls()
        copy._opset_version = table._opset_version
        copy.functions = {target: list(entries) for target, entries in table.functions.items()}
        return copy

    setattr(registry_type, "from_torchlib", classmethod(from_torchlib))
    try:
        yield
    finally:
        setattr(registry_type, "from_torchlib", original)


@contextlib.contextmanager
def _quiet_torch_internals() -> Iterator[None]:
    """Silence the notices torch's exporters raise about their own internals (deprecations
    inside torch.export, recurrent layers' flat-weight bookkeeping, the TorchScript
    tracer's shape checks inside nn.RNN): nothing a caller could act on. Whether the
    graph generalises is what validate_onnx checks, at several batch sizes and lengths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
        # Raised for every recurrent layer, whatever the graph does; the batch-size
        # checks in validate_onnx show whether the exported initial state follows the batch.
        warnings.filterwarnings(
            "ignore", message=r"Exporting a model to ONNX with a batch_size other than 1", category=UserWarning
        )
        # torch.export's own inspection of parameters, under a warnings-as-errors filter.
        warnings.filterwarnings(
            "ignore", message=r"The \.grad attribute of a Tensor that is not a leaf", category=UserWarning
        )
        # Inputs that share the batch axis: torch.onnx names the axis once and says so.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
        yield


def _axis_name(input_name: str, axis: int) -> str:
    return "batch" if axis == 0 else f"{input_name}_dim{axis}"


def _dynamo_export(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    config: ExportConfig,
    translations: Mapping | None = None,
) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)  # one symbol: every input shares the batch size
    dims: tuple[Any, ...] = tuple(
        {axis: batch if axis == 0 else torch.export.Dim(_axis_name(name, axis), min=1) for axis in axes}
        for name, axes in zip(config.input_names, config.dynamic_axes)
    )
    signature = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature):
        dims = (dims,)  # torch.export matches the shapes of a forward(*inputs) as one tuple
    program = torch.onnx.export(
        model,
        example_inputs,
        dynamo=True,
        opset_version=config.opset,
        input_names=list(config.input_names),
        output_names=list(config.output_names),
        dynamic_shapes=dims,
        verbose=False,
        custom_translation_table=dict(translations or {}),
    )
    assert program is not None  # torch.onnx.export returns the program when dynamo=True
    return program.model_proto


def _torchscript_export(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: ExportConfig
) -> onnx.ModelProto:
    axes = {
        name: {axis: _axis_name(name, axis) for axis in dims}
        for name, dims in zip(config.input_names, config.dynamic_axes)
    }
    for name in config.output_names:
        axes[name] = {0: "batch"}
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        example_inputs,
        buffer,  # type: ignore[arg-type]  # a file object works as well as a path
        dynamo=False,
        opset_version=config.opset,
        input_names=list(config.input_names),
        output_names=list(config.output_names),
        dynamic_axes=axes,
    )
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    config: ExportConfig = ExportConfig(),
    metadata: Mapping[str, object] | None = None,
    translations: Mapping | None = None,
) -> onnx.ModelProto:
    """Export `model` in eval mode to `path` and return the checked graph.

    Every axis listed in `config.dynamic_axes` stays symbolic. `metadata` is
    written into the graph's metadata_props as "deepr.<key>" (JSON values).
    `translations` adds ONNX translations for aten operators torch.onnx lacks
    (see gradients.py); they need the dynamo exporter.
    """
    if len(example_inputs) != len(config.input_names):
        raise ExportError(f"{len(example_inputs)} example inputs for input names {config.input_names}")
    was_training = model.training
    model.eval()
    try:
        with _EXPORTING, _quiet_torch_internals(), _translation_table_built_once():
            if config.dynamo:
                proto = _dynamo_export(model, example_inputs, config, translations)
            else:
                proto = _torchscript_export(model, example_inputs, config)
    except Exception as exc:  # torch raises many types here; the caller needs one
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    finally:
        model.train(was_training)

    del proto.metadata_props[:]  # drop torch's internal bookkeeping; keep only what deepr documents
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, encode_fact(value)
    proto.producer_name = "deepr"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    return proto
