"""Character sequences for next-character models, as the tutorial builds them:
windows of `maxlen` characters every `step` characters, each followed by the
character to predict, one-hot encoded.

The character set is fixed (lower-cased printable ASCII and newline, 70
characters), so a model's output size does not depend on its corpus and any
client knows the mapping: text is lower-cased, tabs become spaces, and other
characters are dropped.
"""

from __future__ import annotations

import string
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError

__all__ = ["CHARSET", "CharWindows", "encode_text", "read_corpus"]

CHARSET = "\n " + "".join(sorted(set(string.printable) - set(string.whitespace) - set(string.ascii_uppercase)))
_INDEX = {c: i for i, c in enumerate(CHARSET)}


def encode_text(text: str) -> np.ndarray:
    """Character indices (int64) of `text` after lower-casing; characters outside CHARSET are dropped."""
    text = text.lower().replace("\t", " ")
    return np.fromiter((_INDEX[c] for c in text if c in _INDEX), dtype=np.int64)


def read_corpus(source: str | Path) -> str:
    """Text from a file, or from an http(s) URL when the network allows."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=30) as response:  # noqa: S310 (the user's own URL)
                return response.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise DatasetError(f"cannot download {source}: {exc}") from None
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"cannot read text file {path}: {exc.strerror or exc}") from None


class CharWindows(Dataset):
    """(one-hot window float32 (maxlen, len(CHARSET)), next character index) pairs.

    Windows are one-hot encoded when read, so a corpus of N characters costs N
    integers of memory, not N/step * maxlen * 70 floats.
    """

    def __init__(self, codes: np.ndarray, maxlen: int = 60, step: int = 3) -> None:
        if len(codes) <= maxlen:
            raise DatasetError(
                f"the text has {len(codes)} usable characters; at least {maxlen + 1} are needed for one window"
            )
        self.codes = torch.from_numpy(codes)
        self.maxlen = maxlen
        self.starts = torch.arange(0, len(codes) - maxlen, step)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[i])
        window = self.codes[start : start + self.maxlen]
        return torch.nn.functional.one_hot(window, len(CHARSET)).float(), self.codes[start + self.maxlen]
