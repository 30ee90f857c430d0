"""The tensors of an imported graph that Grad-CAM and feature graphs may name: its 4-D
activations, and the one Grad-CAM explains when none is named."""

from __future__ import annotations

import onnx

from .files import tensor_shapes

__all__ = ["NoPictureTensor", "default_gradcam_tensor", "picture_tensors"]

_POOLING = {"GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean", "ReduceMax"}
_FLATTENING = {"Flatten", "Reshape", "Squeeze"}


class NoPictureTensor(ValueError):
    """A graph with no 4-D activation that it pools or flattens."""


def _from_input(model: onnx.ModelProto) -> set[str]:
    """The tensors computed from the graph's inputs (not weights, nor tensors made from
    constants alone, such as weights a graph builds with ConstantOfShape)."""
    weights = {i.name for i in model.graph.initializer}
    reached = {i.name for i in model.graph.input if i.name not in weights}
    for node in model.graph.node:
        if any(i in reached for i in node.input):
            reached.update(node.output)
    return reached


def picture_tensors(model: onnx.ModelProto) -> list[str]:
    """The graph's 4-D tensors computed from its input, in graph order: what Grad-CAM and the
    feature graph may name."""
    shapes = tensor_shapes(model)
    reached = _from_input(model)
    found = []
    for node in model.graph.node:
        for output in node.output:
            if output in reached and len(shapes.get(output, [])) == 4:
                found.append(output)
    return found


def default_gradcam_tensor(model: onnx.ModelProto) -> str:
    """The last 4-D activation before the graph pools or flattens it: the input of the pooling
    nearest the output (or of the flattening, when no pooling feeds it)."""
    shapes = tensor_shapes(model)
    reached = _from_input(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in reversed(model.graph.node):
        if node.op_type not in _POOLING | _FLATTENING or not node.input:
            continue
        source = node.input[0]
        if source not in reached or len(shapes.get(source, [])) != 4:
            continue
        before = producer.get(source)
        if node.op_type in _FLATTENING and before is not None and before.op_type in _POOLING:
            source = before.input[0]
        return source
    raise NoPictureTensor("the graph has no 4-D activation that it pools or flattens: name one with --layer")
