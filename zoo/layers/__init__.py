"""Layers shared by the zoo's model families."""

from .keras import Conv2D, Dense, Flatten, MaxPooling2D, keras_sequential

__all__ = ["Conv2D", "Dense", "Flatten", "MaxPooling2D", "keras_sequential"]
