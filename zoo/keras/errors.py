"""The one error of a Keras import: it names the file and what in it could not be used."""

from __future__ import annotations

__all__ = ["KerasImportError"]


class KerasImportError(ValueError):
    """A Keras file that cannot become a deepr model: not a Keras file, a layer deepr does not
    convert, or weights that do not fit the model's config."""
