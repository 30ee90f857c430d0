"""Embedding and recurrent layers with Keras' names and output conventions.

PyTorch's recurrent layers keep two bias vectors (input-to-hidden and
hidden-to-hidden) where Keras' SimpleRNN and LSTM keep one, so they hold a few
more parameters than the tutorial's tables; `keras_params()` gives Keras'
count and `zoo.summary` prints both with the reason. Keras' GRU (reset_after,
its default) has two bias vectors as well, so its count is the same.
Computation is the same family of cells; the extra bias adds no capacity.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Embedding", "SimpleRNN", "LSTM", "GRU"]


class Embedding(nn.Embedding):
    """`layer_embedding(input_dim, output_dim)`: token ids (B, T) -> vectors (B, T, output_dim)."""

    keras_type = "Embedding"
    keras_name = "embedding"


class _Recurrent:
    """Mixin over nn.RNN / nn.LSTM / nn.GRU: batch-first, returns the last output or the sequence."""

    keras_type: str
    keras_name: str
    _gates: int
    _keras_biases: int  # bias vectors per gate in Keras

    def _setup(self, return_sequences: bool) -> None:
        self.return_sequences = return_sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = super().forward(x)  # type: ignore[misc]  # (B, T, units)
        return out if self.return_sequences else out[:, -1]

    def keras_params(self) -> int:
        m, n = self.input_size, self.hidden_size  # type: ignore[attr-defined]
        return self._gates * (n * m + n * n + self._keras_biases * n)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, return_sequences={self.return_sequences}"  # type: ignore[misc]


# Their forward returns one tensor (Keras' layer output) where PyTorch's returns (output, state).
class SimpleRNN(_Recurrent, nn.RNN):  # type: ignore[misc]
    """`layer_simple_rnn(units)`: s_t = tanh(U x_t + W s_{t-1} + b)."""

    keras_type, keras_name, _gates, _keras_biases = "SimpleRNN", "simple_rnn", 1, 1

    def __init__(self, input_size: int, units: int, return_sequences: bool = False) -> None:
        nn.RNN.__init__(self, input_size, units, batch_first=True)
        self._setup(return_sequences)


class LSTM(_Recurrent, nn.LSTM):  # type: ignore[misc]
    """`layer_lstm(units)`: input, forget, cell and output gates."""

    keras_type, keras_name, _gates, _keras_biases = "LSTM", "lstm", 4, 1

    def __init__(self, input_size: int, units: int, return_sequences: bool = False) -> None:
        nn.LSTM.__init__(self, input_size, units, batch_first=True)
        self._setup(return_sequences)


class GRU(_Recurrent, nn.GRU):  # type: ignore[misc]
    """`layer_gru(units)`: update, reset and candidate gates (Keras' reset_after form)."""

    keras_type, keras_name, _gates, _keras_biases = "GRU", "gru", 3, 2

    def __init__(self, input_size: int, units: int, return_sequences: bool = False) -> None:
        nn.GRU.__init__(self, input_size, units, batch_first=True)
        self._setup(return_sequences)
