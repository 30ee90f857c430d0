"""The tutorial's architectures built in Keras 3 (PyTorch backend), trained for a few steps
on the embedded real data, as the oracle of deepr's Keras import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

os.environ["KERAS_BACKEND"] = "torch"  # before Keras is imported: the oracle runs on the PyTorch deepr has

import keras  # noqa: E402
from keras import layers, regularizers  # noqa: E402

SEQUENCE_LENGTHS = (13, 29)
"""Two lengths every recurrent model is checked at."""


@dataclass
class Case:
    """One architecture: how Keras builds it and the real inputs it is trained and checked on."""

    name: str
    build: Callable[[], keras.Model]
    data: str
    """digits, flat_digits, photos, words, multi_hot or chars."""
    recurrent: bool = False


def _sequential(*stack) -> keras.Model:
    return keras.Sequential(list(stack))


def _convnet(pooling: bool) -> keras.Model:
    def pool() -> list:
        return [layers.MaxPooling2D(2)] if pooling else []

    return _sequential(
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"),
        *pool(),
        layers.Conv2D(64, 3, activation="relu"),
        *pool(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    )


def _imdb_dense(l2: float, dropout: float) -> keras.Model:
    def penalty():
        return regularizers.l2(l2) if l2 else None

    def drop() -> list:
        return [layers.Dropout(dropout)] if dropout else []

    return _sequential(
        keras.Input((WORDS,)),
        layers.Dense(16, activation="relu", kernel_regularizer=penalty()),
        *drop(),
        layers.Dense(16, activation="relu", kernel_regularizer=penalty()),
        *drop(),
        layers.Dense(1, activation="sigmoid"),
    )


def _recurrent(cell, **options) -> keras.Model:
    return _sequential(
        keras.Input((None,), dtype="int64"),
        layers.Embedding(VOCABULARY, 32),
        cell(32, return_sequences=True, **options),
        cell(16, **options),
        layers.Dense(1, activation="sigmoid"),
    )


def _char_lstm() -> keras.Model:
    return _sequential(
        keras.Input((CHAR_WINDOW, len(CHARS))), layers.LSTM(128), layers.Dense(len(CHARS), activation="softmax")
    )


def _catsdogs() -> keras.Model:
    return _sequential(
        keras.Input((150, 150, 3)),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(512, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    )


def _separable_block() -> keras.Model:
    return _sequential(
        keras.Input((64, 64, 3)),
        layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.SeparableConv2D(32, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.DepthwiseConv2D(3, padding="same"),
        layers.MaxPooling2D(3, strides=2, padding="same"),
        layers.ZeroPadding2D(1),
        layers.SeparableConv2D(64, 3, activation="relu"),
        layers.AveragePooling2D(2),
        layers.GlobalAveragePooling2D(),
        layers.Dense(1, activation="sigmoid"),
    )


def _branches() -> keras.Model:
    pictures = keras.Input((32, 32, 3))
    x = layers.Rescaling(2.0, offset=-1.0)(pictures)
    a = layers.Conv2D(16, 3, padding="same", activation="relu", name="left")(x)
    b = layers.Conv2D(16, 1, name="right")(x)
    added = layers.Add()([a, b])
    joined = layers.Concatenate()([added, a])
    pooled = layers.MaxPooling2D(2)(joined)
    reshaped = layers.Reshape((16 * 16, 32))(pooled)
    return keras.Model(pictures, layers.Dense(2, activation="softmax")(layers.Flatten()(reshaped)))


def _activations() -> keras.Model:
    """Keras' other built-in activations, on digits."""
    return _sequential(
        keras.Input((784,)),
        *(layers.Dense(32, activation=name) for name in ("elu", "selu", "softplus", "softsign", "swish", "gelu")),
        layers.Dense(32),
        layers.Activation("relu6"),
        layers.Dense(10, activation="softmax"),
    )


WORDS = 10_000
VOCABULARY = 1_000
CHAR_WINDOW = 40
CHARS = "abcdefghijklmnopqrstuvwxyz .,"

CASES = [
    Case(
        "mnist_dense",
        lambda: _sequential(
            keras.Input((784,)), layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")
        ),
        "flat_digits",
    ),
    Case("mnist_convnet", lambda: _convnet(True), "digits"),
    Case("mnist_convnet_nopool", lambda: _convnet(False), "digits"),
    Case("imdb_dense", lambda: _imdb_dense(0.0, 0.0), "multi_hot"),
    Case("imdb_l2_dropout", lambda: _imdb_dense(0.001, 0.5), "multi_hot"),
    Case("imdb_simple_rnn", lambda: _recurrent(layers.SimpleRNN), "words", recurrent=True),
    Case("imdb_lstm", lambda: _recurrent(layers.LSTM), "words", recurrent=True),
    Case("imdb_gru", lambda: _recurrent(layers.GRU), "words", recurrent=True),
    Case("imdb_gru_reset_before", lambda: _recurrent(layers.GRU, reset_after=False), "words", recurrent=True),
    Case("char_lstm", _char_lstm, "chars"),
    Case("catsdogs_convnet", _catsdogs, "photos"),
    Case("separable_block", _separable_block, "photos64"),
    Case("branches", _branches, "photos32"),
    Case("activations", _activations, "flat_digits"),
]


@dataclass
class Data:
    train_x: np.ndarray
    train_y: np.ndarray
    held_out: np.ndarray
    """Inputs no training step saw (for recurrent cases, at the longer of SEQUENCE_LENGTHS)."""


def _photos(side: int) -> Data:
    from zoo.datasets.images import skimage_cat_crops

    (train, train_y), _, (test, _) = skimage_cat_crops(train_per_class=12, held_out_per_class=8)

    def pixels(images) -> np.ndarray:
        return np.stack([np.asarray(im.convert("RGB").resize((side, side)), np.float32) / 255 for im in images])

    return Data(pixels(train), np.asarray(train_y, np.float32), pixels(test))


def _words(text: str) -> list[int]:
    """The text's words as ids by frequency (0 the most common), capped at VOCABULARY."""
    from collections import Counter

    words = text.lower().split()
    ranks = {word: i for i, (word, _) in enumerate(Counter(words).most_common(WORDS))}
    return [ranks[word] for word in words]


def real_data(kind: str) -> Data:
    """Embedded real data for one kind of input: digits, photo crops, docstring words or characters."""
    rng = np.random.default_rng(0)
    if kind in ("digits", "flat_digits"):
        from zoo.datasets import load_dataset

        data = load_dataset("digits")
        x = np.stack([np.asarray(data.train[i][0]) for i in range(256)]).transpose(0, 2, 3, 1)  # NHWC
        y = np.asarray([int(data.train[i][1]) for i in range(256)])
        test = np.stack([np.asarray(data.test[i][0]) for i in range(7)]).transpose(0, 2, 3, 1)
        if kind == "flat_digits":
            x, test = x.reshape(len(x), -1), test.reshape(len(test), -1)
        return Data(x, y, test)
    if kind.startswith("photos"):
        return _photos(int(kind[6:] or 150))
    from zoo.datasets.stdlib_text import docstrings

    text = docstrings(max_chars=40_000)
    if kind == "chars":
        kept = "".join(c for c in text.lower().replace("\n", " ") if c in CHARS)
        ids = np.asarray([CHARS.index(c) for c in kept])
        starts = rng.integers(0, len(ids) - CHAR_WINDOW - 1, 263)
        windows = np.eye(len(CHARS), dtype=np.float32)[np.stack([ids[s : s + CHAR_WINDOW] for s in starts])]
        return Data(windows[:256], ids[starts[:256] + CHAR_WINDOW], windows[256:])
    ids = np.asarray(_words(text))
    half = len(ids) // 2  # label: from the first or the second half of the corpus
    length = max(SEQUENCE_LENGTHS)
    starts = rng.integers(0, len(ids) - length, 263)
    sequences = np.stack([ids[s : s + length] for s in starts])
    labels = (starts > half).astype(np.float32)
    if kind == "multi_hot":
        vectors = np.zeros((len(sequences), WORDS), np.float32)
        np.put_along_axis(vectors, sequences, 1.0, axis=1)
        return Data(vectors[:256], labels[:256], vectors[256:])
    sequences = np.minimum(sequences, VOCABULARY - 1)
    return Data(sequences[:256], labels[:256], sequences[256:])


def trained(case: Case, data: Data) -> keras.Model:
    """The case's model after a few rmsprop steps, so its weights are not the initial ones."""
    keras.utils.set_random_seed(0)
    model = case.build()
    outputs = model.output_shape[-1]
    model.compile(
        optimizer="rmsprop", loss="binary_crossentropy" if outputs == 1 else "sparse_categorical_crossentropy"
    )
    model.fit(data.train_x, data.train_y, batch_size=32 if len(data.train_x) > 64 else 8, epochs=1, verbose=0)
    return model
