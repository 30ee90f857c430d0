"""Argument types shared by the commands."""

from __future__ import annotations

import argparse

__all__ = ["int_list"]


def int_list(text: str) -> list[int]:
    """ "1,8,32" -> [1, 8, 32]; every value at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values
