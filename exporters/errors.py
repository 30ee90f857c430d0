"""Errors raised while exporting and validating ONNX graphs."""

from __future__ import annotations

__all__ = ["ExportError", "ValidationError", "ShapeMismatchError", "ToleranceError"]


class ExportError(RuntimeError):
    """torch -> ONNX conversion failed, or the graph did not pass onnx.checker."""


class ValidationError(ExportError):
    """onnxruntime's results differ from PyTorch's; `failures` lists every mismatch."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        super().__init__(f"{len(failures)} mismatch(es) between onnxruntime and PyTorch:\n  " + "\n  ".join(failures))


class ShapeMismatchError(ValidationError):
    """An output's shape differs between onnxruntime and PyTorch."""


class ToleranceError(ValidationError):
    """An output's values differ by more than the stated tolerance."""
