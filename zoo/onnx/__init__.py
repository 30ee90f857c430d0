"""ONNX files from elsewhere as zoo models: checked, kept and registered; no PyTorch module."""

from .errors import OnnxImportError
from .files import read_onnx_file
from .store import ImportedOnnx, import_onnx, imported_onnx

__all__ = ["ImportedOnnx", "OnnxImportError", "import_onnx", "imported_onnx", "read_onnx_file"]
