"""Words to model inputs, Keras' IMDB way, shared by training and serving.

A text is split into lower-case words, numbers and punctuation marks; each known word
becomes its frequency rank (1 = most frequent) plus `INDEX_FROM` (3), after a start mark
(1); unknown words and ranks at or beyond `num_words` become OOV (2); 0 pads. Dense nets
take the multi-hot vector of those indices, recurrent nets the sequence, padded or cut at
the front to `maxlen`. The vocabulary travels with the model (config parameter
`deepr.text_encoding`), so a client sends text, not indices.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from serving.protocol.schema import TEXT_ENCODING_KEY

__all__ = ["INDEX_FROM", "OOV", "START", "TEXT_ENCODING_KEY", "WordEncoding", "multi_hot", "pad_sequences", "tokenize"]

START, OOV, INDEX_FROM = 1, 2, 3
_TOKEN = re.compile(r"[a-z_]+|\d+|[^\sa-z_\d]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def multi_hot(seqs: Sequence[Sequence[int]], num_words: int) -> np.ndarray:
    """(N, num_words) float32 with 1 where a word occurs (Keras' vectorize_sequences)."""
    out = np.zeros((len(seqs), num_words), dtype=np.float32)
    for i, seq in enumerate(seqs):
        out[i, [w for w in seq if w < num_words]] = 1.0
    return out


def pad_sequences(seqs: Sequence[Sequence[int]], maxlen: int) -> np.ndarray:
    """(N, maxlen) int64, padded with 0 and truncated at the front, as Keras' defaults do."""
    out = np.zeros((len(seqs), maxlen), dtype=np.int64)
    for i, seq in enumerate(seqs):
        tail = list(seq)[-maxlen:]
        if tail:
            out[i, -len(tail) :] = tail
    return out


@dataclass(frozen=True)
class WordEncoding:
    words: tuple[str, ...]
    """Vocabulary in rank order: words[0] has rank 1."""
    num_words: int
    """Indices at or beyond this become OOV."""
    maxlen: int | None = None
    """Sequence length for recurrent models; None: multi-hot vectors."""

    def indices(self, text: str) -> list[int]:
        ranks = self._ranks()
        out = [START]
        for token in tokenize(text):
            index = ranks.get(token, OOV)
            out.append(index if index < self.num_words else OOV)
        return out

    def _ranks(self) -> dict[str, int]:
        cache = self.__dict__.get("_rank_cache")
        if cache is None:
            cache = {w: r + INDEX_FROM for r, w in enumerate(self.words, start=1)}
            object.__setattr__(self, "_rank_cache", cache)
        return cache

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        seqs = [self.indices(t) for t in texts]
        return multi_hot(seqs, self.num_words) if self.maxlen is None else pad_sequences(seqs, self.maxlen)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WordEncoding":
        fields = json.loads(text)
        return cls(words=tuple(fields["words"]), num_words=fields["num_words"], maxlen=fields.get("maxlen"))
