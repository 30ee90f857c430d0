"""The tutorial's character-level language model: LSTM(128) over one-hot characters, dense softmax."""

from __future__ import annotations

from torch import nn

from .._registry import register_model
from ..datasets.chars import CHARSET
from ..layers import LSTM, Dense, keras_sequential

_UNITS = 128


@register_model(
    "char_lstm",
    section="Text generation",
    input_shape=(None, len(CHARSET)),
    dataset="chars",
    # The tutorial's optimizer; 2 epochs over 200,000 characters of docstrings take about a minute here.
    recipe={"epochs": 2, "batch_size": 128, "optimizer": "rmsprop", "lr": 0.01, "validation_split": 0.05},
    # TorchScript, as the word models (see sequence.py): the window length stays free.
    export={"input_names": ("chars",), "output_names": ("probabilities",), "dynamic_axes": ((0, 1),), "dynamo": False},
)
def char_lstm() -> nn.Sequential:
    """LSTM(128) over one-hot characters (windows of 60, step 3), dense softmax over the 70-character set."""
    return keras_sequential(
        LSTM(len(CHARSET), _UNITS),
        Dense(_UNITS, len(CHARSET), activation="softmax"),
    )
