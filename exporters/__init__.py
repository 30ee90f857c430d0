"""Turn zoo models into validated ONNX graphs inside a Triton-layout model repository."""

from .config import ExportConfig
from .errors import ExportError, ShapeMismatchError, ToleranceError, ValidationError
from .onnx import export_onnx
from .repository import add_to_repository
from .validate import ValidationReport, validate_onnx
from .zoo_models import ExportResult, UntrainedWeightsWarning, export_model

__all__ = [
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ShapeMismatchError",
    "ToleranceError",
    "UntrainedWeightsWarning",
    "ValidationError",
    "ValidationReport",
    "add_to_repository",
    "export_model",
    "export_onnx",
    "validate_onnx",
]
