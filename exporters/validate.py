"""Check an exported graph against PyTorch: onnxruntime on several batch sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .config import ExportConfig
from .errors import ShapeMismatchError, ToleranceError

__all__ = ["ValidationReport", "validate_onnx"]


@dataclass(frozen=True)
class ValidationReport:
    input_shapes: tuple[tuple[int, ...], ...]
    """Shape of the first input in each case that was compared."""
    max_abs_diff: float
    """Largest |onnxruntime - PyTorch| over every output and case."""
    max_relative_diff: float
    """Largest |onnxruntime - PyTorch| / max |PyTorch output|, per output, over every case."""
    atol: float
    rtol: float


def validate_onnx(
    model: nn.Module,
    onnx_path: str | Path,
    cases: Sequence[Sequence[np.ndarray]],
    config: ExportConfig = ExportConfig(),
    *,
    reductions: Mapping[str, Callable[[np.ndarray], np.ndarray] | None] | None = None,
) -> ValidationReport:
    """Run PyTorch and onnxruntime (CPU) on each case (one array per graph input) and compare.

    Every shape or value mismatch over all cases is collected before one error
    is raised, so one run shows whether a failure depends on the batch size or
    the sequence length. `reductions` maps an output name to a function applied
    to both sides before comparing (None: not compared here), for outputs only
    defined up to a permutation (max-pooling's gradient picks any of several equal maxima).
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape_failures: list[str] = []
    value_failures: list[str] = []
    worst = worst_relative = 0.0
    model.eval()
    for arrays in cases:
        feeds = dict(zip(config.input_names, arrays))
        label = f"input shape {tuple(arrays[0].shape)}"
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in arrays))
        expected = [t.detach().numpy() for t in (expected if isinstance(expected, (tuple, list)) else (expected,))]
        actual = session.run(list(config.output_names), feeds)
        for name, want, got in zip(config.output_names, expected, actual):
            if reductions and name in reductions:
                reduce = reductions[name]
                if reduce is None:  # checked by the caller in its own way
                    continue
                want, got = reduce(want), reduce(got)
            if want.shape != got.shape:
                shape_failures.append(f"{label}, output {name!r}: shape {got.shape}, PyTorch {want.shape}")
                continue
            diff = float(np.max(np.abs(want - got))) if want.size else 0.0
            worst = max(worst, diff)
            # rtol is relative to the output's largest magnitude: float32 rounding grows with the
            # scale of the values, so elementwise relative error misjudges near-zero entries.
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            if scale > config.atol:  # relative to outputs that are all but zero says nothing
                worst_relative = max(worst_relative, diff / scale)
            if diff > config.atol + config.rtol * scale:
                value_failures.append(
                    f"{label}, output {name!r}: max |diff| {diff:.3g} exceeds atol {config.atol:g} + rtol {config.rtol:g} "
                    f"x max |output| {scale:.3g}"
                )
    if shape_failures:
        raise ShapeMismatchError(shape_failures + value_failures)
    if value_failures:
        raise ToleranceError(value_failures)
    return ValidationReport(tuple(tuple(c[0].shape) for c in cases), worst, worst_relative, config.atol, config.rtol)
