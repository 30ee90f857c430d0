"""Turn zoo models into validated ONNX graphs inside a Triton-layout model repository."""

from .config import ExportConfig
from .errors import ExportError, ShapeMismatchError, ToleranceError, UnknownLayerError, ValidationError
from .onnx import export_onnx
from .pipeline import ExportResult
from .repository import add_to_repository
from .validate import ValidationReport, validate_onnx
from .weights import UntrainedWeightsWarning
from .zoo_models import export_model

__all__ = [
    "ExportConfig",
    "ExportError",
    "UnknownLayerError",
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
