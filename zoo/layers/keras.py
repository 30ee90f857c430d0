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

from .regularizers import L1L2

__all__ = [
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "MaxPooling2D",
    "SeparableConv2D",
    "keras_sequential",
]

_ACTIVATIONS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda x: x,
    "linear": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: F.softmax(x, dim=-1),  # over the last axis: a Dense layer's units
    # the rest of Keras' built-in activations that mean the same in Keras 2 and 3
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "swish": F.silu,
    "silu": F.silu,
    "gelu": F.gelu,  # Keras' default: the exact form, not the tanh approximation
    "relu6": F.relu6,
    "exponential": torch.exp,
}


def _activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in _ACTIVATIONS:
        known = ", ".join(sorted(k for k in _ACTIVATIONS if k))
        raise ValueError(f"unknown activation {name!r}; expected one of: {known}")
    return _ACTIVATIONS[name]


class _Activated(nn.Module):
    """Applies the Keras `activation` after the wrapped PyTorch layer's own forward,
    and holds the optional `kernel_regularizer` (see regularizers.py)."""

    activation: str | None
    kernel_regularizer: L1L2 | None

    def _set_activation(self, activation: str | None, kernel_regularizer: L1L2 | None = None) -> None:
        self.activation = activation
        self._act = _activation(activation)
        self.kernel_regularizer = kernel_regularizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(super().forward(x))  # type: ignore[misc]  # the PyTorch layer's forward

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


class Dense(_Activated, nn.Linear):
    """`layer_dense(units, activation)`: a linear layer followed by its activation."""

    keras_type = "Dense"
    keras_name = "dense"

    def __init__(
        self, in_features: int, units: int, activation: str | None = None, kernel_regularizer: L1L2 | None = None
    ) -> None:
        nn.Linear.__init__(self, in_features, units)
        self._set_activation(activation, kernel_regularizer)


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
        kernel_regularizer: L1L2 | None = None,
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, filters, kernel_size, padding=padding)
        self._set_activation(activation, kernel_regularizer)


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


class Dropout(nn.Dropout):
    """`layer_dropout(rate)`: zeroes a fraction `rate` of features in training only."""

    keras_type = "Dropout"
    keras_name = "dropout"


class BatchNormalization(nn.Module):
    """`layer_batch_normalization()` after a Conv2D (NCHW, per channel) or a Dense layer (per feature).

    Keras' defaults: momentum 0.99 (PyTorch counts it the other way: 0.01) and
    epsilon 1e-3. Its moving mean and variance are non-trainable parameters in
    Keras' count; here they are buffers, so Keras' "Non-trainable params" of a
    BatchNormalization layer show up as 2 x features in `keras_params`.
    """

    keras_type = "BatchNormalization"
    keras_name = "batch_normalization"

    def __init__(self, features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(features, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, C, H, W): normalise each channel over batch and space
            return F.batch_norm(
                x,
                self.norm.running_mean,
                self.norm.running_var,
                self.norm.weight,
                self.norm.bias,
                self.training,
                self.norm.momentum or 0.0,  # always 0.01 here; the stubs allow None (a running average)
                self.norm.eps,
            )
        return self.norm(x)

    def keras_params(self) -> int:
        return 4 * self.norm.num_features


class SeparableConv2D(nn.Module):
    """`layer_separable_conv_2d`: a depthwise conv (one filter per input channel) then a 1x1 pointwise conv.

    Parameters: in*k*k (depthwise, no bias) + in*filters + filters (pointwise), as in Keras.
    """

    keras_type = "SeparableConv2D"
    keras_name = "separable_conv2d"

    def __init__(
        self, in_channels: int, filters: int, kernel_size: int, activation: str | None = None, padding: str = "valid"
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=padding, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, filters, 1)
        self.activation = activation
        self._act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.pointwise(self.depthwise(x)))


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
