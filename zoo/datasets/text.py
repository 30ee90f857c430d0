"""Word sequences in Keras' IMDB format, from imdb.npz or from the standard library's text.

Keras' convention, kept here: a review is a list of word ranks (1 = most
frequent word) shifted by `index_from` (3), prefixed by `start_char` (1); ranks
at or beyond `num_words` become `oov_char` (2); 0 is padding.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from serving.protocol.text_encoding import INDEX_FROM, OOV, START, tokenize

from .errors import DatasetError
from .stdlib_text import file_fold, prose_and_code

__all__ = ["load_imdb_npz", "stdlib_prose_code"]

Split = tuple[list[list[int]], np.ndarray]


def _limit(seqs: Sequence[Sequence[int]], num_words: int) -> list[list[int]]:
    return [[w if w < num_words else OOV for w in seq] for seq in seqs]


def load_imdb_npz(path: str | Path, num_words: int) -> tuple[Split, Split, list[str] | None]:
    """((train sequences, labels), (test sequences, labels), words) from Keras' imdb.npz.

    The file holds object arrays of word-rank lists, so it is loaded with
    pickle enabled: load only files you trust (your own copy of imdb.npz).
    `words` come from Keras' imdb_word_index.json beside it, when it is there.
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
    index_file = path.with_name("imdb_word_index.json")
    words = None
    if index_file.is_file():
        ranks = json.loads(index_file.read_text())
        words = [w for w, _ in sorted(ranks.items(), key=lambda item: item[1])][: max(num_words - INDEX_FROM, 0)]
    return splits[0], splits[1], words


def stdlib_prose_code(num_words: int, per_class: int = 2500, seed: int = 0) -> tuple[Split, Split, list[str]]:
    """The standard library's prose-vs-code task as Keras-style sequences.

    One file in five (chosen by a stable hash) is held out whole for testing.
    Code snippets outnumber prose about 5:1, so both classes are sampled down
    to `per_class` training and `per_class // 4` test examples: the
    common-sense baseline is 50%. The word index is built on the training split and
    returned as the words in rank order.
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
    words = [w for w, _ in Counter(t for toks in train_tokens for t in toks).most_common()]
    ranks = {w: r for r, w in enumerate(words, start=1)}

    def encode(tokens: list[str]) -> list[int]:
        return [START] + [ranks[t] + INDEX_FROM if t in ranks else OOV for t in tokens]

    train = (_limit([encode(t) for t in train_tokens], num_words), labels_arr[chosen["train"]])
    test = (_limit([encode(tokenize(texts[i])) for i in chosen["test"]], num_words), labels_arr[chosen["test"]])
    return train, test, words[: max(num_words - INDEX_FROM, 0)]
