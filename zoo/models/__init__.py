"""Model families; importing this package registers every model."""

from . import mnist  # noqa: F401  (registers models)
