"""The one error of an ONNX import: it names the file and what in it could not be used."""

from __future__ import annotations

__all__ = ["OnnxImportError"]


class OnnxImportError(ValueError):
    """An ONNX file that cannot become a deepr model: not ONNX, refused by onnx's checker, not
    runnable by onnxruntime, or not what the import was told (labels, layout)."""
