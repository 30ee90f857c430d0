"""deepr's model zoo: the tutorial's models, defined in PyTorch and registered by name."""

from . import models as _models  # noqa: F401  (registers the built-in models)
from ._registry import ModelSpec, get_model, get_model_spec, list_models, register_model
from ._summary import Summary, model_summary, summary

__all__ = [
    "ModelSpec",
    "Summary",
    "get_model",
    "get_model_spec",
    "list_models",
    "model_summary",
    "register_model",
    "summary",
]
