"""Keras models saved by R's save_model_hdf5, Keras 2 or Keras 3, read without TensorFlow or Keras."""

from .errors import KerasImportError
from .files import KerasFile, read_keras_file
from .layers import SUPPORTED_LAYERS
from .model import INPUT_LAYOUTS, KerasGraph, from_keras

__all__ = [
    "INPUT_LAYOUTS",
    "KerasFile",
    "KerasGraph",
    "KerasImportError",
    "SUPPORTED_LAYERS",
    "from_keras",
    "read_keras_file",
]
