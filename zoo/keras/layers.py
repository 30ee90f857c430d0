"""Keras layers as PyTorch modules, built from a layer's config and its saved weights.

Inside the model, pictures are NCHW (what PyTorch's convolutions take); every other tensor
has Keras' own layout. Layers whose meaning depends on the axis order (Flatten, Reshape,
Concatenate, softmax over channels) convert at their boundary, so Flatten produces Keras'
NHWC order and a Dense layer after it takes Keras' kernel as it is.

Each converter checks that the weights fit the config and says which layer does not.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..layers.keras import Dense, _Activated, _activation
from ..layers.recurrent import GRU, LSTM, SimpleRNN
from .errors import KerasImportError

__all__ = ["SUPPORTED_LAYERS", "convert_layer", "KerasInput", "RankAware"]


def to_keras(x: torch.Tensor, rank: int) -> torch.Tensor:
    """An internal tensor of rank `rank` in Keras' layout: NCHW pictures as NHWC."""
    return x.permute(0, 2, 3, 1) if rank == 4 else x


def to_internal(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if rank == 4 else x


class RankAware(nn.Module):
    """A layer whose work depends on its input's rank (pictures are NCHW inside, NHWC in
    Keras). The model's check records the rank; from then on it is a constant, so the
    layer traces (torch.fx, for feature graphs) without branching on a tensor."""

    rank: int | None = None

    def rank_of(self, x: torch.Tensor) -> int:
        return self.rank if self.rank is not None else x.dim()


def _internal_axis(axis: int, rank: int) -> int:
    """Keras' axis of a rank-`rank` tensor, as an axis of the internal tensor."""
    axis = axis % rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


class KerasInput(nn.Module):
    """The model's input as Keras takes it; NHWC pictures become NCHW here."""

    keras_type = "InputLayer"

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if self.channels_last else x  # only ever set for (N, H, W, C) pictures


class _Pad(nn.Module):
    """Keras' "same" padding: as much as the kernel needs, the odd pixel after (bottom, right).
    The amounts depend on the picture's size, which the model's check fixes: they are worked
    out on that first run and constant after it (so the layer traces without reading shapes)."""

    def __init__(self, kernel: Sequence[int], strides: Sequence[int], dilation: Sequence[int], value: float) -> None:
        super().__init__()
        self.kernel, self.strides, self.dilation, self.value = tuple(kernel), tuple(strides), tuple(dilation), value
        self.pads: list[int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads is None:
            pads: list[int] = []
            for size, k, s, d in reversed(list(zip(x.shape[2:], self.kernel, self.strides, self.dilation))):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            self.pads = pads
        return F.pad(x, self.pads, value=self.value) if any(self.pads) else x


class Conv2D(_Activated, nn.Conv2d):
    """Keras' Conv2D on NCHW tensors, "same" padding as Keras pads."""

    keras_type = "Conv2D"

    def __init__(self, conv: dict[str, Any], pad: _Pad | None, activation: str | None) -> None:
        nn.Conv2d.__init__(self, **conv)
        self.pad = pad
        self._set_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x) if self.pad is not None else x)


class DepthwiseConv2D(Conv2D):
    keras_type = "DepthwiseConv2D"


class SeparableConv2D(nn.Module):
    """A depthwise convolution, then a 1x1 pointwise one with the bias and activation."""

    keras_type = "SeparableConv2D"

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d, pad: _Pad | None, activation: str | None) -> None:
        super().__init__()
        self.pad, self.depthwise, self.pointwise = pad, depthwise, pointwise
        self.activation = activation
        self._act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.pointwise(self.depthwise(self.pad(x) if self.pad is not None else x)))


class BatchNormalization(RankAware):
    """Inference-time batch normalisation over Keras' last axis (channels of a picture)."""

    keras_type = "BatchNormalization"

    def __init__(
        self, mean: np.ndarray, variance: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float, axis: int
    ):
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.from_numpy(gamma))
        self.bias = nn.Parameter(torch.from_numpy(beta))
        self.register_buffer("running_mean", torch.from_numpy(mean))
        self.register_buffer("running_var", torch.from_numpy(variance))
        self.epsilon = epsilon
        self.keras_count = 2 * mean.size + gamma.size + beta.size

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = self.rank_of(x)
        if self.axis % rank != rank - 1:  # Keras names the axis it normalises; only the last is converted
            raise ValueError(f"BatchNormalization over axis {self.axis} of a rank-{rank} tensor: only the last axis")
        shape = (1, -1, 1, 1) if rank == 4 else (-1,)
        scale = self.weight * torch.rsqrt(self.running_var + self.epsilon)
        return (x - self.running_mean.view(shape)) * scale.view(shape) + self.bias.view(shape)

    def keras_params(self) -> int:
        return self.keras_count


class Pool2D(nn.Module):
    def __init__(self, keras_type: str, size: Sequence[int], strides: Sequence[int], same: bool) -> None:
        super().__init__()
        self.keras_type = keras_type
        self.size, self.strides, self.same = tuple(size), tuple(strides), same
        self.max = keras_type == "MaxPooling2D"
        value = float("-inf") if self.max else 0.0
        self.pad = _Pad(size, strides, (1, 1), value) if same else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max:
            return F.max_pool2d(self.pad(x) if self.pad is not None else x, self.size, self.strides)
        if self.pad is None:
            return F.avg_pool2d(x, self.size, self.strides)
        # Keras averages over the pixels inside the picture only
        total = F.avg_pool2d(self.pad(x), self.size, self.strides)
        inside = F.avg_pool2d(self.pad(torch.ones_like(x[:1, :1])), self.size, self.strides)
        return total / inside


class GlobalPool2D(nn.Module):
    def __init__(self, keras_type: str, keepdims: bool) -> None:
        super().__init__()
        self.keras_type, self.keepdims = keras_type, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_type == "GlobalMaxPooling2D":
            return x.amax(dim=(2, 3), keepdim=self.keepdims)
        return x.mean(dim=(2, 3), keepdim=self.keepdims)


class Flatten(RankAware):
    keras_type = "Flatten"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_keras(x, self.rank_of(x)).flatten(1)


class Reshape(RankAware):
    keras_type = "Reshape"

    def __init__(self, target: Sequence[int]) -> None:
        super().__init__()
        self.target = tuple(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_internal(to_keras(x, self.rank_of(x)).reshape(x.shape[0], *self.target), len(self.target) + 1)


class ZeroPadding2D(nn.Module):
    keras_type = "ZeroPadding2D"

    def __init__(self, top: int, bottom: int, left: int, right: int) -> None:
        super().__init__()
        self.pads = (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


class Activation(nn.Module):
    keras_type = "Activation"

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self._act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(x)


class Rescaling(nn.Module):
    keras_type = "Rescaling"

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class Identity(nn.Module):
    """Layers with nothing to do at inference: Dropout and its kin."""

    def __init__(self, keras_type: str) -> None:
        super().__init__()
        self.keras_type = keras_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Add(nn.Module):
    keras_type = "Add"

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        total = tensors[0]
        for tensor in tensors[1:]:
            total = total + tensor
        return total


class Concatenate(RankAware):
    keras_type = "Concatenate"

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=_internal_axis(self.axis, self.rank_of(tensors[0])))


class Embedding(nn.Embedding):
    keras_type = "Embedding"


class _GRUResetBeforeOp(torch.autograd.Function):
    """Keras' GRU with reset_after=False: the reset gate applies to the state before the
    recurrent kernel. PyTorch's GRU has only the other form; ONNX's GRU has both
    (linear_before_reset=0 is this one), so the export writes that node directly."""

    @staticmethod
    def forward(ctx, x, kernel, recurrent, bias, units: int):  # x (T, B, I); kernel (1, 3u, I) rows z, r, h
        del ctx
        w, r, b = kernel[0], recurrent[0], bias[0, : 3 * units]
        state = x.new_zeros(x.shape[1], units)
        inputs = x @ w.T + b  # (T, B, 3u)
        outputs = []
        for step in inputs:
            z_in, r_in, h_in = step.split(units, dim=-1)
            rz, rr, rh = r.split(units)
            z = torch.sigmoid(z_in + state @ rz.T)
            reset = torch.sigmoid(r_in + state @ rr.T)
            candidate = torch.tanh(h_in + (reset * state) @ rh.T)
            state = z * state + (1 - z) * candidate
            outputs.append(state)
        sequence = torch.stack(outputs)  # (T, B, u)
        return sequence.unsqueeze(1), state.unsqueeze(0)  # ONNX's Y (T, 1, B, u) and Y_h (1, B, u)

    @staticmethod
    def symbolic(g, x, kernel, recurrent, bias, units: int):
        return g.op("GRU", x, kernel, recurrent, bias, hidden_size_i=units, linear_before_reset_i=0, outputs=2)


class GRUResetBefore(nn.Module):
    keras_type = "GRU"

    def __init__(self, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, return_sequences: bool) -> None:
        super().__init__()
        self.units = recurrent.shape[0]
        self.kernel = nn.Parameter(torch.from_numpy(kernel.T.copy()))  # (3u, I), rows z, r, h as in ONNX
        self.recurrent = nn.Parameter(torch.from_numpy(recurrent.T.copy()))
        self.bias = nn.Parameter(torch.from_numpy(bias.copy()))
        self.return_sequences = return_sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, I)
        onnx_bias = torch.cat([self.bias, torch.zeros_like(self.bias)]).unsqueeze(0)  # no recurrent bias
        sequence, last = _GRUResetBeforeOp.apply(
            x.transpose(0, 1), self.kernel.unsqueeze(0), self.recurrent.unsqueeze(0), onnx_bias, self.units
        )
        return sequence.squeeze(1).transpose(0, 1) if self.return_sequences else last.squeeze(0)


# -- converters ---------------------------------------------------------------------------------------------------


class _Layer:
    """One layer's config and weights, with the checks every converter makes."""

    def __init__(self, name: str, class_name: str, config: dict[str, Any], weights: list[np.ndarray]) -> None:
        self.name, self.class_name, self.config, self.weights = name, class_name, config, weights

    def fail(self, problem: str) -> KerasImportError:
        return KerasImportError(f"layer {self.name} ({self.class_name}): {problem}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def pair(self, key: str, default: Any = None) -> tuple[int, int]:
        value = self.config.get(key, default)
        return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]

    def take(self, *shapes: tuple[int | None, ...]) -> list[np.ndarray]:
        """The weights, checked against `shapes` (None: any size on that axis)."""

        def fits(array: np.ndarray, shape: tuple[int | None, ...]) -> bool:
            return array.ndim == len(shape) and all(s is None or s == a for a, s in zip(array.shape, shape))

        found = [tuple(w.shape) for w in self.weights]
        wanted = [tuple("?" if s is None else s for s in shape) for shape in shapes]
        if len(self.weights) != len(shapes) or not all(fits(w, s) for w, s in zip(self.weights, shapes)):
            raise self.fail(f"the weights do not fit the config: expected arrays of shapes {wanted}, found {found}")
        return [np.ascontiguousarray(w, dtype=np.float32) for w in self.weights]

    def refuse(self, key: str, allowed: Sequence[Any]) -> None:
        value = self.config.get(key, allowed[0])
        if value not in allowed:
            raise self.fail(f"{key}={value!r} is not supported (supported: {', '.join(map(repr, allowed))})")

    def activation(self, key: str = "activation") -> str | None:
        name = self.config.get(key, "linear")
        if not isinstance(name, str):
            raise self.fail(f"a custom {key} {name!r} cannot be converted; use a built-in one by name")
        try:
            _activation(name)
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        return name


def _assign(parameter: torch.Tensor | None, value: np.ndarray) -> None:
    if parameter is not None:
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _pad(layer: _Layer, kernel: tuple[int, int], value: float = 0.0) -> _Pad | None:
    layer.refuse("padding", ("valid", "same"))
    layer.refuse("data_format", ("channels_last", None))
    if layer.get("padding", "valid") == "valid":
        return None
    return _Pad(kernel, layer.pair("strides", 1), layer.pair("dilation_rate", 1), value)


def _dense(layer: _Layer) -> nn.Module:
    units = layer.get("units")
    kernel, *bias = layer.take((None, units), *([(units,)] if layer.get("use_bias", True) else []))
    module = Dense(kernel.shape[0], units, activation=layer.activation())
    _assign(module.weight, kernel.T)
    if bias:
        _assign(module.bias, bias[0])
    else:
        module.register_parameter("bias", None)
    return module


def _conv(layer: _Layer) -> nn.Module:
    filters, kernel_size = layer.get("filters"), layer.pair("kernel_size")
    groups = layer.get("groups", 1)
    kernel, *bias = layer.take((*kernel_size, None, filters), *([(filters,)] if layer.get("use_bias", True) else []))
    conv = dict(
        in_channels=kernel.shape[2] * groups,
        out_channels=filters,
        kernel_size=kernel_size,
        stride=layer.pair("strides", 1),
        dilation=layer.pair("dilation_rate", 1),
        groups=groups,
        bias=bool(bias),
    )
    module = Conv2D(conv, _pad(layer, kernel_size), layer.activation())
    _assign(module.weight, kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    if bias:
        _assign(module.bias, bias[0])
    return module


def _depthwise_conv(layer: _Layer, kernel: np.ndarray, bias: np.ndarray | None) -> nn.Conv2d:
    """(kh, kw, C, multiplier) -> a grouped conv whose output channel c * multiplier + m is Keras' (c, m)."""
    kh, kw, channels, multiplier = kernel.shape
    conv = nn.Conv2d(
        channels,
        channels * multiplier,
        (kh, kw),
        stride=layer.pair("strides", 1),
        dilation=layer.pair("dilation_rate", 1),
        groups=channels,
        bias=bias is not None,
    )
    _assign(conv.weight, kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw))
    if bias is not None:
        _assign(conv.bias, bias)
    return conv


def _depthwise(layer: _Layer) -> nn.Module:
    size, multiplier = layer.pair("kernel_size"), layer.get("depth_multiplier", 1)
    use_bias = layer.get("use_bias", True)
    kernel, *bias = layer.take((*size, None, multiplier), *([(None,)] if use_bias else []))
    conv = _depthwise_conv(layer, kernel, bias[0] if bias else None)
    module = DepthwiseConv2D(
        dict(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=size,
            stride=conv.stride,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=use_bias,
        ),
        _pad(layer, size),
        layer.activation(),
    )
    module.load_state_dict(conv.state_dict())
    return module


def _separable(layer: _Layer) -> nn.Module:
    size, multiplier, filters = layer.pair("kernel_size"), layer.get("depth_multiplier", 1), layer.get("filters")
    use_bias = layer.get("use_bias", True)
    depthwise, pointwise, *bias = layer.take(
        (*size, None, multiplier), (1, 1, None, filters), *([(filters,)] if use_bias else [])
    )
    pointwise_conv = nn.Conv2d(pointwise.shape[2], filters, 1, bias=use_bias)
    _assign(pointwise_conv.weight, pointwise.transpose(3, 2, 0, 1))
    if bias:
        _assign(pointwise_conv.bias, bias[0])
    return SeparableConv2D(
        _depthwise_conv(layer, depthwise, None), pointwise_conv, _pad(layer, size), layer.activation()
    )


def _batch_norm(layer: _Layer) -> nn.Module:
    axis = layer.get("axis", -1)
    if not isinstance(axis, int):  # Keras 2 writes [3]
        if len(axis) != 1:
            raise layer.fail(f"axis={axis!r}: only one axis, the last, is supported")
        axis = axis[0]
    center, scale = layer.get("center", True), layer.get("scale", True)
    shapes = [(None,)] * (scale + center + 2)
    arrays = layer.take(*shapes)
    gamma = arrays.pop(0) if scale else np.ones_like(arrays[-1])
    beta = arrays.pop(0) if center else np.zeros_like(arrays[-1])
    mean, variance = arrays
    if not (gamma.shape == beta.shape == mean.shape == variance.shape):
        raise layer.fail(
            f"the weights do not fit: gamma, beta, mean, variance of sizes {[gamma.size, beta.size, mean.size, variance.size]}"
        )
    module = BatchNormalization(mean, variance, gamma, beta, float(layer.get("epsilon", 1e-3)), axis)
    module.keras_count = sum(w.size for w in layer.weights)
    return module


def _pool(layer: _Layer) -> nn.Module:
    size = layer.pair("pool_size", 2)
    strides = layer.pair("strides") if layer.get("strides") is not None else size
    layer.refuse("padding", ("valid", "same"))
    layer.refuse("data_format", ("channels_last", None))
    return Pool2D(layer.class_name, size, strides, layer.get("padding", "valid") == "same")


def _global_pool(layer: _Layer) -> nn.Module:
    layer.refuse("data_format", ("channels_last", None))
    return GlobalPool2D(layer.class_name, bool(layer.get("keepdims", False)))


def _zero_padding(layer: _Layer) -> nn.Module:
    padding = layer.get("padding", 1)
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    (top, bottom), (left, right) = [(p, p) if isinstance(p, int) else p for p in padding]
    return ZeroPadding2D(top, bottom, left, right)


def _embedding(layer: _Layer) -> nn.Module:
    if layer.get("mask_zero", False):
        raise layer.fail("mask_zero=True (masked time steps) is not supported")
    (table,) = layer.take((layer.get("input_dim"), layer.get("output_dim")))
    module = Embedding(*table.shape)
    _assign(module.weight, table)
    return module


def _recurrent_checks(layer: _Layer) -> None:
    for key in ("go_backwards", "stateful", "return_state"):
        layer.refuse(key, (False,))
    layer.refuse("use_bias", (True,))
    layer.refuse("activation", ("tanh",))
    if layer.class_name != "SimpleRNN":
        layer.refuse("recurrent_activation", ("sigmoid",))


def _recurrent(layer: _Layer) -> nn.Module:
    _recurrent_checks(layer)
    units, return_sequences = layer.get("units"), bool(layer.get("return_sequences", False))
    gates = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[layer.class_name]
    reset_after = layer.class_name == "GRU" and layer.get("reset_after", layer.class_name == "GRU")
    bias_shape = (2, gates * units) if reset_after else (gates * units,)
    kernel, recurrent, bias = layer.take((None, gates * units), (units, gates * units), bias_shape)
    if layer.class_name == "GRU" and not reset_after:
        return GRUResetBefore(kernel, recurrent, bias, return_sequences)
    cell = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}[layer.class_name]
    module = cell(kernel.shape[0], units, return_sequences=return_sequences)
    input_bias, recurrent_bias = (bias[0], bias[1]) if reset_after else (bias, np.zeros_like(bias))
    order = np.arange(gates * units)
    if layer.class_name == "GRU":  # Keras' gates z, r, h; PyTorch's r, z, n
        order = np.concatenate([order[units : 2 * units], order[:units], order[2 * units :]])
    weights = {"weight_ih": kernel.T, "weight_hh": recurrent.T, "bias_ih": input_bias, "bias_hh": recurrent_bias}
    for key, value in weights.items():
        _assign(getattr(module, f"{key}_l0"), value[order])
    return module


_CONVERTERS: dict[str, Callable[[_Layer], nn.Module]] = {
    "Dense": _dense,
    "Conv2D": _conv,
    "DepthwiseConv2D": _depthwise,
    "SeparableConv2D": _separable,
    "BatchNormalization": _batch_norm,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "ZeroPadding2D": _zero_padding,
    "Embedding": _embedding,
    "SimpleRNN": _recurrent,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "Flatten": lambda layer: Flatten(),
    "Reshape": lambda layer: Reshape(layer.get("target_shape")),
    "Dropout": lambda layer: Identity("Dropout"),
    "SpatialDropout2D": lambda layer: Identity("SpatialDropout2D"),
    "Activation": lambda layer: Activation(layer.activation() or "linear"),
    "Rescaling": lambda layer: Rescaling(float(layer.get("scale")), float(layer.get("offset", 0.0))),
    "Add": lambda layer: Add(),
    "Concatenate": lambda layer: Concatenate(int(layer.get("axis", -1))),
}
_WEIGHTLESS = {"Flatten", "Reshape", "Dropout", "SpatialDropout2D", "Activation", "Rescaling", "Add", "Concatenate"}
_WEIGHTLESS |= {"MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D"}

SUPPORTED_LAYERS = ("InputLayer", *sorted(_CONVERTERS))


def convert_layer(name: str, class_name: str, config: dict[str, Any], weights: list[np.ndarray]) -> nn.Module:
    """The PyTorch module of one Keras layer, its weights loaded."""
    layer = _Layer(name, class_name, config, weights)
    converter = _CONVERTERS.get(class_name)
    if converter is None:
        raise layer.fail(f"deepr does not convert {class_name} layers; supported: {', '.join(SUPPORTED_LAYERS)}")
    if class_name in _WEIGHTLESS:
        layer.take()  # none: a file that gives this layer weights does not match its config
    return converter(layer)
