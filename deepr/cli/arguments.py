"""Argument types shared by the commands."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, TypeVar

from serving.client import DEFAULT_URL

T = TypeVar("T")

__all__ = [
    "comma_list",
    "int_list",
    "integer",
    "number",
    "ratio",
    "add_invert_option",
    "add_server_options",
    "ignored_picture_options",
]


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum], refused with the range otherwise."""
    wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.range = (minimum, maximum)  # type: ignore[attr-defined]  # the CLI tests read it
    return parse


def ratio(text: str) -> float:
    """An argparse type: a positive number, or a fraction as in 1/255."""
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / (float(denominator) if slash else 1.0)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a positive number or a fraction such as 1/255, got {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or a fraction such as 1/255, got {text!r}")
    return value


def comma_list(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse type: comma-separated values, each read by `parse` (its range kept)."""

    def parse_all(text: str) -> list[T]:
        return [parse(part.strip()) for part in text.split(",")]

    parse_all.range = getattr(parse, "range", None)  # type: ignore[attr-defined]
    return parse_all


def number(
    *, above: float | None = None, minimum: float | None = None, maximum: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a finite number > `above` (or >= `minimum`), <= `maximum`."""
    bounds = [f"> {above:g}" if above is not None else "", f">= {minimum:g}" if minimum is not None else ""]
    bounds.append(f"<= {maximum:g}" if maximum is not None else "")
    wanted = "a number " + " and ".join(b for b in bounds if b)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or (above is not None and value <= above)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.range = (above if above is not None else minimum, maximum)  # type: ignore[attr-defined]
    return parse


def int_list(text: str) -> list[int]:
    """ "1,8,32" -> [1, 8, 32]; every value at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def add_invert_option(p: argparse.ArgumentParser) -> None:
    """--invert and --framing: how a digit model's pictures are prepared. --invert defaults to
    None, so that a choice the model ignores can be told apart from the default."""
    p.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        help="digit models take light ink on dark: auto inverts pictures drawn dark on light (a light border); "
        "yes / no force it (default: auto)",
    )
    p.add_argument(
        "--framing",
        choices=("auto", "none"),
        default="auto",
        help="auto: frame pictures as the model states (the MNIST models: ink cut out, fitted into 20x20, "
        "centred by its mass in 28x28); none: resize the whole picture (default: auto)",
    )


def ignored_picture_options(args: argparse.Namespace, model: str, preprocessing: Any) -> list[str]:
    """One line for each of --invert and --framing that the model gives nothing to do."""
    notes = []
    if args.invert is not None and preprocessing.background is None:
        notes.append(
            f"note: {model} states no background (it takes pictures as they are): --invert {args.invert} does nothing"
        )
    if args.framing != "auto" and preprocessing.framing is None:
        notes.append(f"note: {model} does not frame its pictures: --framing {args.framing} does nothing")
    return notes


def add_server_options(p: argparse.ArgumentParser, graph: str | None = None) -> None:
    """--url, and with `graph` (what the exported file is) --local: the same two options on
    every client command."""
    if graph is not None:
        p.add_argument(
            "--local", type=Path, help=f"run this exported {graph} model.onnx in-process instead of asking a server"
        )
    p.add_argument("--url", default=DEFAULT_URL, help="server address (default: %(default)s)")
