"""Label files: one label per line, in class-index order (Triton's label_filename).

A label that holds a backslash, newline or carriage return (a character
model's classes are characters) is written with backslash escapes, so every
class stays on its own line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["read_labels", "write_labels"]

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


def _escape(label: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in label)


def _unescape(line: str) -> str:
    out, chars = [], iter(line)
    for c in chars:
        out.append(_UNESCAPES.get(next(chars, ""), "\\") if c == "\\" else c)
    return "".join(out)


def write_labels(path: Path, labels: Sequence[str]) -> None:
    path.write_text("".join(_escape(label) + "\n" for label in labels), encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    return [_unescape(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]
