"""Gradients inside exported graphs: trace a function that calls torch.autograd.grad into
plain aten operations, then export those with torch.onnx.

torch.onnx cannot export torch.autograd.grad itself. make_fx records the backward
pass as forward operations (relu/max-pool/linear backward become ordinary ops);
tracing symbolically keeps the batch size free. `aten.convolution_backward` has
no ONNX translation in torch.onnx, so one is registered here: the gradient of a
convolution with respect to its input is a transposed convolution with the same
weights, strides, padding, dilation and groups.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from onnxscript import opset18 as op
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["GRADIENT_TRANSLATIONS", "traced_with_weights"]


def _convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                          groups, output_mask):  # noqa: A002 (aten's argument names)
    if transposed or any(output_padding) or list(output_mask) != [True, False, False]:
        raise NotImplementedError("only the input gradient of a plain convolution is translated")
    dims = len(stride)
    pads = list(padding) * (dims // len(padding))
    grad_input = op.ConvTranspose(
        grad_output, weight, strides=list(stride), pads=pads * 2, dilations=list(dilation) * (dims // len(dilation)), group=groups
    )
    # output_mask says the weight and bias gradients are not used; the optimiser drops these.
    return grad_input, op.ConstantOfShape(op.Shape(weight)), op.ConstantOfShape(op.Shape(grad_output, start=1, end=2))


GRADIENT_TRANSLATIONS = {torch.ops.aten.convolution_backward.default: _convolution_backward}


class _TracedWithWeights(nn.Module):
    """Holds a traced graph and the weights it takes as buffers, so torch.export sees
    constants rather than inputs."""

    def __init__(self, graph: torch.fx.GraphModule, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.keys = list(weights)
        for i, value in enumerate(weights.values()):
            self.register_buffer(f"w{i}", value)

    # Two named inputs rather than *inputs: torch.export matches dynamic shapes to named arguments.
    def forward(self, first: torch.Tensor, second: torch.Tensor) -> Any:
        return self.graph({k: getattr(self, f"w{i}") for i, k in enumerate(self.keys)}, first, second)


def traced_with_weights(
    fn: Callable[..., Any], weights: dict[str, torch.Tensor], example_inputs: Sequence[torch.Tensor]
) -> nn.Module:
    """A module computing fn(weights, first, second) with its backward passes recorded as
    ordinary operations, ready for torch.onnx.export(..., custom_translation_table=GRADIENT_TRANSLATIONS)."""
    weights = {k: v.detach() for k, v in weights.items()}
    graph = make_fx(fn, tracing_mode="symbolic")(weights, *example_inputs)
    return _TracedWithWeights(graph, weights)
