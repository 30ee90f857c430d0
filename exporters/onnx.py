"""The one place that calls torch.onnx.export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import onnx
import torch
from torch import nn

from .config import ExportConfig
from .errors import ExportError

__all__ = ["export_onnx", "METADATA_PREFIX"]

METADATA_PREFIX = "deepr."


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    config: ExportConfig = ExportConfig(),
    metadata: Mapping[str, object] | None = None,
) -> onnx.ModelProto:
    """Export `model` in eval mode to `path` and return the checked graph.

    Every axis listed in `config.dynamic_axes` stays symbolic. `metadata` is
    written into the graph's metadata_props as "deepr.<key>" (JSON values).
    """
    if len(example_inputs) != len(config.input_names):
        raise ExportError(f"{len(example_inputs)} example inputs for input names {config.input_names}")
    dims = [
        {axis: torch.export.Dim(f"{name}_dim{axis}" if axis else "batch", min=1) for axis in axes}
        for name, axes in zip(config.input_names, config.dynamic_axes)
    ]
    was_training = model.training
    model.eval()
    try:
        program = torch.onnx.export(
            model,
            example_inputs,
            dynamo=True,
            opset_version=config.opset,
            input_names=list(config.input_names),
            output_names=list(config.output_names),
            dynamic_shapes=tuple(dims),
            verbose=False,
        )
    except Exception as exc:  # torch raises many types here; the caller needs one
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    finally:
        model.train(was_training)

    proto = program.model_proto
    del proto.metadata_props[:]  # drop torch's internal bookkeeping; keep only what deepr documents
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = "deepr"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    return proto
