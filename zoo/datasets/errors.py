"""Errors raised by the dataset loaders."""

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset is missing, corrupt or does not match what the recipe expects."""
