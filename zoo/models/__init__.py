"""Model families; importing this package registers every model."""

from . import bases, imdb, mnist, pictures, sequence, text_generation  # noqa: F401  (registers models)
