"""The one way a graph reaches a repository: torch.onnx export, validation against PyTorch,
config.pbtxt, and an atomic copy into `<repository>/<name>/<version>/`.

Each kind of graph (Grad-CAM, features, filters, DeepDream, style, the character step)
only declares a GraphExport: the module to export, example inputs, validation cases, the
serving config's tensors, and the facts it carries as metadata. Every fact is written here
twice under the same key in the same encoding (serving/protocol/schema.py): into the ONNX
metadata, which local sessions read, and into config.pbtxt, which served clients read, so
the two never disagree.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import encode_fact

from .config import ExportConfig
from .onnx import METADATA_PREFIX, export_onnx
from .repository import add_to_repository
from .validate import ValidationReport, validate_onnx

__all__ = ["GraphExport", "ExportResult", "export_graph"]


@dataclass(frozen=True)
class ExportResult:
    name: str
    version_dir: Path
    validation: ValidationReport
    seconds: float


@dataclass
class GraphExport:
    """Everything one graph export needs; export_graph does the rest."""

    config: mc.ModelConfig
    """The serving config: name, max_batch_size, inputs and outputs (from serving_config)."""
    module: torch.nn.Module
    """What torch.onnx exports."""
    example: tuple[torch.Tensor, ...]
    export: ExportConfig
    cases: Sequence[Sequence[np.ndarray]]
    """Validation inputs, one array per graph input."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reference: torch.nn.Module | None = None
    """What onnxruntime is compared with (default: `module`)."""
    validate: Callable[[Path], ValidationReport] | None = None
    """A validation of its own instead of comparing with `reference` on `cases`."""
    translations: Mapping | None = None
    convert: Callable[[Path], None] | None = None
    """Rewrites the exported file in place before it is validated (float16 weights)."""
    labels: Sequence[str] | None = None
    """Written to labels.txt beside the config."""


def export_graph(
    graph: GraphExport, repository: str | Path, *, version: int | None = None, started: float | None = None
) -> ExportResult:
    """Export, validate and add `graph` to `repository`; `started` (time.perf_counter) counts
    the preparation before this call into ExportResult.seconds."""
    start = time.perf_counter() if started is None else started
    for key, value in graph.metadata.items():
        graph.config.parameters[METADATA_PREFIX + key].string_value = encode_fact(value)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        export_onnx(
            graph.module, graph.example, onnx_file, graph.export, graph.metadata, translations=graph.translations
        )
        if graph.convert is not None:
            graph.convert(onnx_file)
        if graph.validate is not None:
            report = graph.validate(onnx_file)
        else:
            report = validate_onnx(graph.reference or graph.module, onnx_file, graph.cases, graph.export)
        version_dir = add_to_repository(Path(repository), graph.config, onnx_file, labels=graph.labels, version=version)
    return ExportResult(graph.config.name, version_dir, report, time.perf_counter() - start)
