"""Errors raised while exporting and validating ONNX graphs."""

from __future__ import annotations

__all__ = ["ExportError", "UnknownLayerError", "ValidationError", "ShapeMismatchError", "ToleranceError", "quoted"]


class ExportError(RuntimeError):
    """torch -> ONNX conversion failed, or the graph did not pass onnx.checker."""


class UnknownLayerError(ExportError):
    """The layer or tensor an export names is not in the model: the caller's input is wrong."""


def quoted(name: str, limit: int = 80) -> str:
    """`name` quoted for a message, cut at `limit` characters (names come from users)."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name)} characters)"


class ValidationError(ExportError):
    """onnxruntime's results differ from PyTorch's; `failures` lists every mismatch."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        super().__init__(f"{len(failures)} mismatch(es) between onnxruntime and PyTorch:\n  " + "\n  ".join(failures))


class ShapeMismatchError(ValidationError):
    """An output's shape differs between onnxruntime and PyTorch."""


class ToleranceError(ValidationError):
    """An output's values differ by more than the stated tolerance."""
