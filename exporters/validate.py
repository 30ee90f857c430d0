"""Check an exported graph against PyTorch: onnxruntime on several batch sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .config import ExportConfig
from .errors import ShapeMismatchError, ToleranceError

__all__ = ["ValidationReport", "validate_onnx"]


@dataclass(frozen=True)
class ValidationReport:
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    """Largest |onnxruntime - PyTorch| over every output and batch size."""
    atol: float
    rtol: float


def validate_onnx(
    model: nn.Module,
    onnx_path: str | Path,
    input_shapes: tuple[tuple[int, ...], ...],
    config: ExportConfig = ExportConfig(),
    *,
    seed: int = 0,
) -> ValidationReport:
    """Run PyTorch and onnxruntime (CPU) on the same random inputs and compare.

    `input_shapes` are per-example shapes (no batch axis). Every shape or value
    mismatch over all batch sizes is collected before one error is raised.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    shape_failures: list[str] = []
    value_failures: list[str] = []
    worst = 0.0
    model.eval()
    for batch in config.validation_batch_sizes:
        feeds = {
            name: rng.random((batch, *shape), dtype=np.float32) for name, shape in zip(config.input_names, input_shapes)
        }
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in feeds.values()))
        expected = [t.numpy() for t in (expected if isinstance(expected, (tuple, list)) else (expected,))]
        actual = session.run(list(config.output_names), feeds)
        for name, want, got in zip(config.output_names, expected, actual):
            if want.shape != got.shape:
                shape_failures.append(f"batch {batch}, output {name!r}: shape {got.shape}, PyTorch {want.shape}")
                continue
            diff = float(np.max(np.abs(want - got))) if want.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(got, want, atol=config.atol, rtol=config.rtol):
                value_failures.append(
                    f"batch {batch}, output {name!r}: max |diff| {diff:.3g} exceeds atol {config.atol:g} + rtol {config.rtol:g}"
                )
    if shape_failures:
        raise ShapeMismatchError(shape_failures + value_failures)
    if value_failures:
        raise ToleranceError(value_failures)
    return ValidationReport(tuple(config.validation_batch_sizes), worst, config.atol, config.rtol)


