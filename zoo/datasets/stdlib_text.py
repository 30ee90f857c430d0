"""English text that ships with Python itself: the standard library's docstrings and code.

Two real corpora, read offline from the running interpreter's own library:

- `docstrings()`: every module, class and function docstring, for character models;
- `prose_and_code()`: a binary task standing in for IMDB's positive/negative
  reviews offline: is a snippet English prose (a docstring paragraph, label 1)
  or Python code (a few lines of source, label 0)? Snippets are grouped by
  source file, so a held-out split can keep whole files out of training.
"""

from __future__ import annotations

import ast
import sysconfig
import warnings
import zlib
from pathlib import Path

__all__ = ["stdlib_files", "docstrings", "prose_and_code"]

_CODE_LINES = 3  # lines per code snippet
_MIN_PROSE_WORDS = 8


def stdlib_files() -> list[Path]:
    """The top-level .py modules of the standard library, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_") and p.name != "this.py")


def _parse(path: Path) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # old escape sequences in some modules
            return ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def _docstring_nodes(tree: ast.Module) -> list[ast.Expr]:
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                nodes.append(first)
    return nodes


def docstrings(max_chars: int | None = None) -> str:
    """Every docstring of the standard library's top-level modules, cleaned and joined by blank lines."""
    parts: list[str] = []
    size = 0
    for path in stdlib_files():
        tree = _parse(path)
        if tree is None:
            continue
        for node in _docstring_nodes(tree):
            text = ast.get_docstring(ast.Module(body=[node], type_ignores=[]), clean=True) or ""
            parts.append(text)
            size += len(text) + 2
            if max_chars is not None and size >= max_chars:
                return "\n\n".join(parts)[:max_chars]
    return "\n\n".join(parts)


def prose_and_code() -> tuple[list[str], list[int], list[int]]:
    """(snippets, labels 1=prose 0=code, group = index of the source file)."""
    texts: list[str] = []
    labels: list[int] = []
    groups: list[int] = []
    for group, path in enumerate(stdlib_files()):
        tree = _parse(path)
        if tree is None:
            continue
        doc_lines: set[int] = set()
        for node in _docstring_nodes(tree):
            doc_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            for paragraph in (ast.get_docstring(ast.Module(body=[node], type_ignores=[]), clean=True) or "").split(
                "\n\n"
            ):
                if len(paragraph.split()) >= _MIN_PROSE_WORDS:
                    texts.append(" ".join(paragraph.split()))
                    labels.append(1)
                    groups.append(group)
        lines = path.read_text(encoding="utf-8").splitlines()
        code = [
            line.strip()
            for number, line in enumerate(lines, start=1)
            if number not in doc_lines and line.strip() and not line.strip().startswith("#")
        ]
        for start in range(0, len(code) - _CODE_LINES + 1, _CODE_LINES):
            texts.append(" ".join(code[start : start + _CODE_LINES]))
            labels.append(0)
            groups.append(group)
    return texts, labels, groups


def file_fold(group: int, folds: int = 5) -> int:
    """A stable fold number for a source file (same on every run and machine)."""
    return zlib.crc32(str(group).encode()) % folds
