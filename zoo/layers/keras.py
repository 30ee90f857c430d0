"""Layers that behave, name and count parameters like their Keras counterparts.

Keras folds the activation into Dense and Conv2D; so do these, which keeps a
model's summary rows and "the output of layer X" (for intermediate activations
and Grad-CAM) the same as in Keras. Each class names its Keras type
(`keras_type`) and the base of the automatic layer names Keras gives
(`keras_name`: conv2d, conv2d_1, ...).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Conv2D", "Dense", "Flatten", "MaxPooling2D", "keras_sequential"]

_ACTIVATIONS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda x: x,
    "linear": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: F.softmax(x, dim=-1),
}


def _activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in _ACTIVATIONS:
        known = ", ".join(sorted(k for k in _ACTIVATIONS if k))
        raise ValueError(f"unknown activation {name!r}; expected one of: {known}")
    return _ACTIVATIONS[name]


class _Activated(nn.Module):
    """Applies the Keras `activation` after the wrapped PyTorch layer's own forward."""

    activation: str | None

    def _set_activation(self, activation: str | None) -> None:
        self.activation = activation
        self._act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(super().forward(x))  # type: ignore[misc]  (the PyTorch layer's forward)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


class Dense(_Activated, nn.Linear):
    """`layer_dense(units, activation)`: a linear layer followed by its activation."""

    keras_type = "Dense"
    keras_name = "dense"

    def __init__(self, in_features: int, units: int, activation: str | None = None) -> None:
        nn.Linear.__init__(self, in_features, units)
        self._set_activation(activation)


class Conv2D(_Activated, nn.Conv2d):
    """`layer_conv_2d(filters, kernel_size, activation, padding)` on NCHW tensors."""

    keras_type = "Conv2D"
    keras_name = "conv2d"

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int | tuple[int, int],
        activation: str | None = None,
        padding: str = "valid",
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, filters, kernel_size, padding=padding)
        self._set_activation(activation)


class MaxPooling2D(nn.MaxPool2d):
    """`layer_max_pooling_2d(pool_size)`; the stride defaults to the pool size, as in Keras."""

    keras_type = "MaxPooling2D"
    keras_name = "max_pooling2d"

    def __init__(self, pool_size: int | tuple[int, int] = 2) -> None:
        super().__init__(pool_size)


class Flatten(nn.Flatten):
    """`layer_flatten()`: keeps the batch axis, flattens the rest."""

    keras_type = "Flatten"
    keras_name = "flatten"


def keras_sequential(*layers: nn.Module) -> nn.Sequential:
    """An nn.Sequential whose children carry Keras' automatic names.

    The first Conv2D is `conv2d`, the next `conv2d_1`, and so on per layer type,
    so state-dict keys, summaries and layer lookups use the names a reader of
    Keras code expects.
    """
    counts: dict[str, int] = {}
    named: OrderedDict[str, nn.Module] = OrderedDict()
    for layer in layers:
        base = getattr(layer, "keras_name", type(layer).__name__.lower())
        n = counts.get(base, 0)
        counts[base] = n + 1
        named[base if n == 0 else f"{base}_{n}"] = layer
    return nn.Sequential(named)
