"""The tutorial's recurrent classifiers: embedding(1000 -> 32), one recurrent layer of 24 units, dense sigmoid."""

from __future__ import annotations

from torch import nn

from .._registry import register_model
from ..layers import GRU, LSTM, Dense, Embedding, SimpleRNN, keras_sequential

_WORDS, _EMBED, _UNITS = 1_000, 32, 24
_RECIPE = {"epochs": 8, "batch_size": 128, "optimizer": "rmsprop", "lr": 1e-3}
# Batch and sequence length stay free in the exported graph.
# The TorchScript exporter: it maps RNN, LSTM and GRU to ONNX's own ops with a free sequence
# length every time, where torch.export fixes the length of every recurrent export after the
# first in a process (torch 2.14: a second imdb_lstm export came out taking 23 tokens only).
_EXPORT = {"input_names": ("tokens",), "output_names": ("probability",), "dynamic_axes": ((0, 1),), "dynamo": False}


def _recurrent(cell: type[nn.Module]) -> nn.Sequential:
    return keras_sequential(
        Embedding(_WORDS, _EMBED),
        cell(_EMBED, _UNITS),
        Dense(_UNITS, 1, activation="sigmoid"),
    )


def _register(name: str, **export):
    return register_model(
        name,
        section="Recurrent Layers",
        input_shape=(None,),
        dataset="words_sequences",
        recipe=_RECIPE,
        task="binary",
        input_dtype="int64",
        export={**_EXPORT, **export},
    )


@_register("imdb_simple_rnn")
def imdb_simple_rnn() -> nn.Sequential:
    """Embedding 1000x32, SimpleRNN(24), dense sigmoid."""
    return _recurrent(SimpleRNN)


@_register("imdb_lstm")
def imdb_lstm() -> nn.Sequential:
    """Embedding 1000x32, LSTM(24), dense sigmoid."""
    return _recurrent(LSTM)


@_register("imdb_gru")
def imdb_gru() -> nn.Sequential:
    """Embedding 1000x32, GRU(24), dense sigmoid."""
    return _recurrent(GRU)
