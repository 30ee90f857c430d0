"""Model families; importing this package registers every model."""

from . import imdb, mnist, sequence  # noqa: F401  (registers models)
