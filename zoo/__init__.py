"""deepr's model zoo: the tutorial's models, defined in PyTorch and registered by name."""

from . import models as _models  # noqa: F401  (registers the built-in models)
from ._registry import ModelSpec, get_model, get_model_spec, list_models, register_model
from ._summary import Summary, model_summary, summary
from .keras import from_keras
from .keras.store import import_keras, register_imported_models
from .onnx.store import register_imported_onnx

register_imported_models()
register_imported_onnx()

__all__ = [
    "ModelSpec",
    "Summary",
    "from_keras",
    "get_model",
    "get_model_spec",
    "import_keras",
    "list_models",
    "model_summary",
    "register_model",
    "summary",
]
