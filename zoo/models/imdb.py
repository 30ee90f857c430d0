"""The tutorial's vector-data nets: 16-16-1 dense classifiers of multi-hot word vectors,
plain, with an L2 kernel penalty, and with dropout."""

from __future__ import annotations

from torch import nn

from .._registry import register_model
from ..layers import L1L2, Dense, Dropout, keras_sequential, regularizer_l2

_WORDS = 10_000
_SECTION = "Regularization"
_RECIPE = {"epochs": 20, "batch_size": 512, "optimizer": "rmsprop", "lr": 1e-3}  # the tutorial's IMDB recipe
_EXPORT = {"input_names": ("words",), "output_names": ("probability",)}


def _imdb_dense(regularizer: L1L2 | None = None, dropout: float = 0.0) -> nn.Sequential:
    def drop() -> list[nn.Module]:
        return [Dropout(dropout)] if dropout else []

    return keras_sequential(
        Dense(_WORDS, 16, activation="relu", kernel_regularizer=regularizer),
        *drop(),
        Dense(16, 16, activation="relu", kernel_regularizer=regularizer),
        *drop(),
        Dense(16, 1, activation="sigmoid"),
    )


def _register(name: str):
    return register_model(
        name,
        section=_SECTION,
        input_shape=(_WORDS,),
        dataset="words_multi_hot",
        recipe=_RECIPE,
        task="binary",
        export=_EXPORT,
    )


@_register("imdb_dense")
def imdb_dense() -> nn.Sequential:
    """Dense 10,000 -> 16 relu -> 16 relu -> 1 sigmoid on multi-hot word vectors."""
    return _imdb_dense()


@_register("imdb_dense_l2")
def imdb_dense_l2() -> nn.Sequential:
    """The same with regularizer_l2(0.001) on both hidden kernels, added to the training loss."""
    return _imdb_dense(regularizer=regularizer_l2(0.001))


@_register("imdb_dense_dropout")
def imdb_dense_dropout() -> nn.Sequential:
    """The same with dropout 0.5 after each hidden layer."""
    return _imdb_dense(dropout=0.5)
