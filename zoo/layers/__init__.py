"""Layers shared by the zoo's model families, named and counted as in Keras."""

from .keras import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, SeparableConv2D, keras_sequential
from .recurrent import GRU, LSTM, Embedding, SimpleRNN
from .regularizers import L1L2, regularization_loss, regularizer_l1, regularizer_l1_l2, regularizer_l2

__all__ = [
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GRU",
    "L1L2",
    "LSTM",
    "MaxPooling2D",
    "SeparableConv2D",
    "SimpleRNN",
    "keras_sequential",
    "regularization_loss",
    "regularizer_l1",
    "regularizer_l1_l2",
    "regularizer_l2",
]
