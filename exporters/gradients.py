"""Gradients inside exported graphs: trace a function that calls torch.autograd.grad into
plain aten operations, then export those with torch.onnx.

torch.onnx cannot export torch.autograd.grad itself. make_fx records the backward
pass as forward operations (relu/max-pool/linear backward become ordinary ops);
tracing symbolically keeps the batch size free. `aten.convolution_backward` has
no ONNX translation in torch.onnx, so one is registered here: the gradient of a
convolution with respect to its input is a transposed convolution with the same
weights, strides, padding, dilation and groups. Average- and max-pooling gradients
are translated here too (see each function).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from serving.protocol.generated import model_config_pb2 as mc

from .config import ExportConfig
from .pipeline import GraphExport

__all__ = ["GRADIENT_TRANSLATIONS", "GradientObjective", "traced_with_weights", "gradient_graph"]


def _to_input_size(grad_input, input, dims: int):  # noqa: A002
    """A strided convolution that skips the last rows or columns of its input (their count is
    not a multiple of the stride) gives them no gradient; the transposed convolution stops
    short of them, so they are padded back as zeros, whatever the input's size at run time."""
    missing = op.Sub(op.Shape(input, start=2), op.Shape(grad_input, start=2))
    # onnxscript's stubs type Constant's result as any tensor type; value_ints makes it INT64.
    pads = op.Concat(op.Constant(value_ints=[0] * (dims + 2 + 2)), missing, axis=0)  # type: ignore[type-var]
    return op.Pad(grad_input, pads)  # type: ignore[arg-type]


def _convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
):  # noqa: A002 (aten's argument names)
    if transposed or any(output_padding) or list(output_mask) != [True, False, False]:
        raise NotImplementedError("only the input gradient of a plain convolution is translated")
    dims = len(stride)
    pads = list(padding) * (dims // len(padding))
    grad_input = _to_input_size(
        op.ConvTranspose(
            grad_output,
            weight,
            strides=list(stride),
            pads=pads * 2,
            dilations=list(dilation) * (dims // len(dilation)),
            group=groups,
        ),
        input,
        dims,
    )
    # output_mask says the weight and bias gradients are not used; the optimiser drops these.
    return grad_input, op.ConstantOfShape(op.Shape(weight)), op.ConstantOfShape(op.Shape(grad_output, start=1, end=2))


def _avg_pool2d_backward(
    grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None
):  # noqa: A002 (aten's argument names)
    # Average pooling spreads each output's gradient evenly over its window: a transposed
    # depthwise convolution with a constant kernel. Exact where every window divides by
    # its full size (count_include_pad, no ceil_mode) and the output size maps back
    # to the input's (stride 1, as in InceptionV3's pooling branches).
    stride = list(stride) or list(kernel_size)
    if ceil_mode or not count_include_pad or divisor_override is not None or any(s != 1 for s in stride):
        raise NotImplementedError(
            "only the input gradient of stride-1 average pooling that counts padding is translated"
        )
    channels = input.shape[1]
    if not isinstance(channels, int):
        raise NotImplementedError("average pooling's input gradient needs a static channel count")
    kh, kw = kernel_size
    weight = op.Constant(value=ir.tensor(np.full((channels, 1, kh, kw), 1.0 / (kh * kw), dtype=np.float32)))
    pads = list(padding) * (2 // len(padding))
    return op.ConvTranspose(grad_output, weight, strides=[1, 1], pads=pads * 2, group=channels)


def _max_pool2d_with_indices_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices):  # noqa: A002 (aten's argument names)
    # Each output's gradient goes to the input element its window's maximum came from.
    # `indices` count within each (sample, channel) plane, so the scatter runs over
    # flattened planes, adding where overlapping windows share a maximum. Window sizes,
    # strides and padding are already in the indices. (onnxscript has no translation and
    # only recent PyTorch decomposes this operator, so graphs rely on neither.)
    planes = op.Concat(op.Shape(input, start=0, end=2), op.Constant(value_ints=[-1]), axis=0)
    zeros = op.Reshape(op.ConstantOfShape(op.Shape(input)), planes)
    scattered = op.ScatterElements(
        zeros, op.Reshape(indices, planes), op.Reshape(grad_output, planes), axis=2, reduction="add"
    )
    return op.Reshape(scattered, op.Shape(input))


GRADIENT_TRANSLATIONS = {
    torch.ops.aten.convolution_backward.default: _convolution_backward,
    torch.ops.aten.avg_pool2d_backward.default: _avg_pool2d_backward,
    torch.ops.aten.max_pool2d_with_indices_backward.default: _max_pool2d_with_indices_backward,
}


class GradientObjective(nn.Module):
    """Base of what deepr exports with gradients inside (Grad-CAM, filters, DeepDream, style).

    `graph_function(weights, *inputs)` is what make_fx traces: the weights come in as an
    argument, so the trace holds them as constants rather than as module parameters.
    Called as a module, the objective runs the same function on its own weights: the
    PyTorch reference the export is validated against.
    """

    def weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    graph_function: Callable[..., Any]
    """(weights, *inputs) -> outputs; each objective defines it with its own inputs."""

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.graph_function(self.weights(), *inputs)


class _TracedWithWeights(nn.Module):
    """Holds a traced graph and the weights it takes as buffers, so torch.export sees
    constants rather than inputs."""

    def __init__(self, graph: torch.fx.GraphModule, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.keys = list(weights)
        for i, value in enumerate(weights.values()):
            self.register_buffer(f"w{i}", value)

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.graph({k: getattr(self, f"w{i}") for i, k in enumerate(self.keys)}, *inputs)


def traced_with_weights(objective: GradientObjective, example_inputs: Sequence[torch.Tensor]) -> nn.Module:
    """A module computing the objective's graph function with its backward passes recorded
    as ordinary operations, ready for torch.onnx.export(..., custom_translation_table=GRADIENT_TRANSLATIONS)."""
    weights = {k: v.detach() for k, v in objective.weights().items()}

    def graph(weights_: dict[str, torch.Tensor], *inputs: torch.Tensor) -> Any:
        return objective.graph_function(weights_, *inputs)  # make_fx traces plain functions

    return _TracedWithWeights(make_fx(graph, tracing_mode="symbolic")(weights, *example_inputs), weights)


def gradient_graph(
    config: mc.ModelConfig,
    objective: GradientObjective,
    example: Sequence[torch.Tensor],
    export: ExportConfig,
    cases: Sequence[Sequence[np.ndarray]],
    metadata: Mapping[str, Any],
    **extra: Any,
) -> GraphExport:
    """The GraphExport of a gradient objective: traced on `example`, exported with the
    gradient translations, validated against the objective itself."""
    return GraphExport(
        config,
        traced_with_weights(objective, example),
        tuple(example),
        export,
        cases,
        metadata,
        reference=objective,
        translations=GRADIENT_TRANSLATIONS,
        **extra,
    )
