"""Model families; importing this package registers every model."""

from . import imdb, mnist, sequence, text_generation  # noqa: F401  (registers models)
