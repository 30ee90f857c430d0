"""Argument types shared by the commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.client import DEFAULT_URL

__all__ = ["int_list", "add_server_options"]


def int_list(text: str) -> list[int]:
    """ "1,8,32" -> [1, 8, 32]; every value at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def add_server_options(p: argparse.ArgumentParser, graph: str | None = None) -> None:
    """--url, and with `graph` (what the exported file is) --local: the same two options on
    every client command."""
    if graph is not None:
        p.add_argument(
            "--local", type=Path, help=f"run this exported {graph} model.onnx in-process instead of asking a server"
        )
    p.add_argument("--url", default=DEFAULT_URL, help="server address (default: %(default)s)")
