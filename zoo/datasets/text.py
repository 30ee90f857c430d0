"""Word sequences in Keras' IMDB format, from imdb.npz or from the standard library's text.

Keras' convention, kept here: a review is a list of word ranks (1 = most
frequent word) shifted by `index_from` (3), prefixed by `start_char` (1); ranks
at or beyond `num_words` become `oov_char` (2); 0 is padding.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DatasetError
from .stdlib_text import file_fold, prose_and_code

__all__ = ["INDEX_FROM", "OOV", "START", "load_imdb_npz", "multi_hot", "pad_sequences", "stdlib_prose_code", "tokenize"]

START, OOV, INDEX_FROM = 1, 2, 3
_TOKEN = re.compile(r"[a-z_]+|\d+|[^\sa-z_\d]")

Split = tuple[list[list[int]], np.ndarray]


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def _limit(seqs: Sequence[Sequence[int]], num_words: int) -> list[list[int]]:
    return [[w if w < num_words else OOV for w in seq] for seq in seqs]


def load_imdb_npz(path: str | Path, num_words: int) -> tuple[Split, Split]:
    """((train sequences, labels), (test sequences, labels)) from Keras' imdb.npz.

    The file holds object arrays of word-rank lists, so it is loaded with
    pickle enabled: load only files you trust (your own copy of imdb.npz).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=True) as data:
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DatasetError(f"{path} is not Keras' imdb.npz: it lacks {exc.args[0]}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} as an .npz file: {exc}") from None
    splits = []
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y):
            raise DatasetError(f"{path}: {len(x)} x_{part} sequences but {len(y)} y_{part} labels")
        seqs = [[START] + [int(w) + INDEX_FROM for w in seq] for seq in x]
        splits.append((_limit(seqs, num_words), np.asarray(y, dtype=np.int64)))
    return splits[0], splits[1]


def stdlib_prose_code(num_words: int, per_class: int = 2500, seed: int = 0) -> tuple[Split, Split]:
    """The standard library's prose-vs-code task as Keras-style sequences.

    One file in five (chosen by a stable hash) is held out whole for testing.
    Code snippets outnumber prose about 5:1, so both classes are sampled down
    to `per_class` training and `per_class // 4` test examples: the
    common-sense baseline is 50%. The word index is built on the training split.
    """
    texts, labels, groups = prose_and_code()
    rng = np.random.default_rng(seed)
    is_test = np.array([file_fold(g) == 0 for g in groups])
    labels_arr = np.asarray(labels)
    chosen = {}
    for split, mask, size in (("train", ~is_test, per_class), ("test", is_test, per_class // 4)):
        picks = [rng.permutation(np.flatnonzero(mask & (labels_arr == c)))[:size] for c in (0, 1)]
        chosen[split] = rng.permutation(np.concatenate(picks))
    train_tokens = [tokenize(texts[i]) for i in chosen["train"]]
    ranks = {w: r for r, (w, _) in enumerate(Counter(t for toks in train_tokens for t in toks).most_common(), start=1)}

    def encode(tokens: list[str]) -> list[int]:
        return [START] + [ranks[t] + INDEX_FROM if t in ranks else OOV for t in tokens]

    train = (_limit([encode(t) for t in train_tokens], num_words), labels_arr[chosen["train"]])
    test = (_limit([encode(tokenize(texts[i])) for i in chosen["test"]], num_words), labels_arr[chosen["test"]])
    return train, test


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
            out[i, -len(tail):] = tail
    return out
