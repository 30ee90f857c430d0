"""Reverse-mode gradients written as ONNX nodes, for graphs deepr did not write.

Grad-CAM needs d(score)/d(A) for one tensor A of a classifier: only the operators between A
and the output take part (pooling, flatten, Gemm, sometimes a convolution, Relu or Softmax).
Converting a whole foreign graph to PyTorch to differentiate that tail is the long way round,
and fails on graphs as common as torchvision's resnet18 exported by torch.onnx (measured:
onnx2torch 1.5.15 and onnx2pytorch 0.6.0 both stop on it). So the tail's backward pass is
written here in ONNX, next to the forward graph: each operator kind has its rule below, and
one without a rule is refused by name.

The graph must be at opset GRADIENT_OPSET (17); `Tail.gradient` adds nodes and initializers
to it (through a GraphBuilder, which the objective that seeds the gradient shares) and returns
the name of dA. Constants take the tail's own float type (float16, float32 or float64), each
rule names the inputs it differentiates, and the forward nodes are left as they are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "Tail", "UnsupportedOperator", "Rule", "DIFFERENTIABLE"]


class UnsupportedOperator(ValueError):
    """An operator between the chosen tensor and the output that has no backward rule here."""


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


_FLOAT_TYPES: dict[int, type] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}
"""The float types the rules write constants in (numpy has no bfloat16)."""


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every typed tensor's element type, as shape inference finds it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


class GraphBuilder:
    """Adds nodes and initializers to a model's graph under names of its own: the mechanics
    that Grad-CAM's objective and the backward pass share."""

    def __init__(self, model: onnx.ModelProto, prefix: str = "deepr_grad") -> None:
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.prefix = prefix
        self._names = itertools.count()

    def name(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._names)}"

    def const(self, value: np.ndarray | np.generic, hint: str = "const") -> str:
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attributes) -> str:
        out = self.name(hint or op_type.lower())
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        return out

    def mean(self, x: str, axes: Sequence[int], keepdims: int = 1, hint: str = "mean") -> str:
        """ReduceMean over `axes`: its axes are an attribute before opset 18, an input from it on."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(np.array(axes, np.int64), "axes")], hint, keepdims=keepdims)
        return self.op("ReduceMean", [x], hint, axes=list(axes), keepdims=keepdims)


class Tail:
    """The operators from tensor `start` to tensor `end` of `model`'s graph, and their backward pass."""

    def __init__(
        self,
        model: onnx.ModelProto,
        start: str,
        end: str,
        shapes: dict[str, list],
        builder: GraphBuilder | None = None,
    ) -> None:
        self.model = model
        self.graph = model.graph
        self.shapes = shapes
        self.builder = builder or GraphBuilder(model)
        self.constants = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                value = _attribute(node, "value")
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value)
        types = _tensor_types(model)
        self.floats = {name for name, kind in types.items() if kind in (*_FLOAT_TYPES, TensorProto.BFLOAT16)}
        self.float_type: int = types.get(start, TensorProto.UNDEFINED)
        """The element type of the chosen tensor, which the tail's constants and casts take."""
        if self.float_type not in _FLOAT_TYPES:
            kind = TensorProto.DataType.Name(self.float_type) if self.float_type else "of no known type"
            raise UnsupportedOperator(
                f"tensor {start!r} is {kind}; gradients are written for float16, float32 and float64 tensors"
            )
        self.float = _FLOAT_TYPES[self.float_type]
        self.start, self.end = start, end
        self.nodes = self._between(start, end)
        self.dependent = {start, *(o for node in self.nodes for o in node.output)}
        """`start` and every tensor of the tail computed from it."""

    def _between(self, start: str, end: str) -> list[onnx.NodeProto]:
        """The nodes on a path from `start` to `end`, in graph (topological) order."""
        depends = {start}
        after = []
        for node in self.graph.node:
            if any(i in depends for i in node.input):
                after.append(node)
                depends.update(node.output)
        if end not in depends:
            raise ValueError(f"the output {end!r} does not depend on tensor {start!r}")
        needed = {end}
        tail = []
        for node in reversed(after):
            if any(o in needed for o in node.output):
                tail.append(node)
                needed.update(i for i in node.input if i in depends)
        return list(reversed(tail))

    # -- building blocks: the builder's, and typed ones ------------------------------------------------------------

    def name(self, hint: str) -> str:
        return self.builder.name(hint)

    def const(self, value: np.ndarray | np.generic, hint: str = "const") -> str:
        return self.builder.const(value, hint)

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attributes) -> str:
        return self.builder.op(op_type, inputs, hint, **attributes)

    def mean(self, x: str, axes: Sequence[int], keepdims: int = 1, hint: str = "mean") -> str:
        return self.builder.mean(x, axes, keepdims, hint)

    def fconst(self, value: float | np.ndarray, hint: str = "const") -> str:
        """A constant in the tail's float type."""
        return self.const(np.asarray(value, dtype=self.float), hint)

    def as_float(self, x: str) -> str:
        """`x` cast to the tail's float type."""
        return self.op("Cast", [x], to=self.float_type)

    def rank(self, tensor: str, op_type: str) -> int:
        shape = self.shapes.get(tensor)
        if shape is None:
            raise UnsupportedOperator(f"{op_type} needs the rank of {tensor!r}, which shape inference leaves unknown")
        return len(shape)

    def per_row(self, tensor: str) -> list | None:
        """The shape with every dimension but the first (the batch) known, or None."""
        shape = self.shapes.get(tensor)
        if shape is None or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return list(shape)

    def static(self, tensor: str) -> list[int] | None:
        shape = self.shapes.get(tensor)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return [int(d) for d in shape]

    # -- the backward pass -----------------------------------------------------------------------------------------

    def gradient(self, seed: str) -> str:
        """The name of d(sum(seed * end)) / d(start): `seed` has `end`'s shape and type."""
        grads: dict[str, str] = {self.end: seed}
        for node in reversed(self.nodes):
            if not any(o in grads for o in node.output):
                continue  # nothing flows back through it (a shape computed from the tensor, say)
            rule = DIFFERENTIABLE.get(node.op_type)
            if rule is None:
                raise UnsupportedOperator(
                    f"operator {node.op_type} ({node.name or node.output[0]}) between the chosen tensor and the "
                    f"output has no backward rule in deepr (rules: {', '.join(sorted(DIFFERENTIABLE))})"
                )
            outgoing = grads.get(node.output[0])
            if outgoing is None:
                continue
            for index, source in enumerate(node.input):
                if source not in self.dependent or source not in self.floats:
                    continue  # constants, and integer inputs (shapes, axes) carry no gradient
                if not rule.differentiates(index):
                    raise UnsupportedOperator(
                        f"input {index} of {node.op_type} ({node.name or node.output[0]}) depends on the chosen tensor; "
                        f"deepr differentiates {node.op_type} along input {', '.join(map(str, rule.inputs or ()))} only"
                    )
                incoming = rule.backward(self, node, index, outgoing)
                grads[source] = self.op("Add", [grads[source], incoming], "sum") if source in grads else incoming
        if self.start not in grads:
            raise UnsupportedOperator(
                f"no gradient reaches {self.start!r}: the output depends on it only through integer tensors (shapes, "
                "indices), which carry none"
            )
        return grads[self.start]

    def reduce_to(self, gradient: str, tensor: str, result: str) -> str:
        """`gradient` (the shape of `result`) summed over the axes `tensor` was broadcast along."""
        if self.shapes.get(result) is not None and self.shapes.get(result) == self.shapes.get(tensor):
            return gradient  # no broadcast (a free batch dimension of the same name on both)
        have_rows, want_rows = self.per_row(result), self.per_row(tensor)
        if (
            have_rows is not None
            and want_rows is not None
            and len(have_rows) == len(want_rows)
            and have_rows[0] == want_rows[0]  # the batch, free or not, the same on both
        ):
            # broadcast within each row (a squeeze-and-excitation scale, N x C x 1 x 1, over its map)
            axes = [i for i, (h, w) in enumerate(zip(have_rows, want_rows)) if i and w == 1 and h != 1]
            if not axes:
                return gradient
            return self.op("ReduceSum", [gradient, self.const(np.array(axes, np.int64), "axes")], keepdims=1)
        have, want = self.static(result), self.static(tensor)
        if have is None or want is None:
            raise UnsupportedOperator(f"broadcasting onto {tensor!r} needs its static shape")
        if have == want:
            return gradient
        padded = [1] * (len(have) - len(want)) + want
        axes = [i for i, (h, w) in enumerate(zip(have, padded)) if w == 1 and h != 1]
        summed = self.op("ReduceSum", [gradient, self.const(np.array(axes, np.int64), "axes")], keepdims=1)
        return self.op("Reshape", [summed, self.const(np.array(want, np.int64), "shape")])

    def other(self, node: onnx.NodeProto, index: int) -> str:
        return node.input[1 - index]


def _identity(t: Tail, node, index, g):
    return g


def _reshape_back(t: Tail, node, index, g):
    return t.op("Reshape", [g, t.op("Shape", [node.input[0]])])


def _relu(t: Tail, node, index, g):
    # from the forward output: y > 0 exactly where x > 0
    return t.op("Mul", [g, t.as_float(t.op("Greater", [node.output[0], t.fconst(0)]))])


def _leaky_relu(t: Tail, node, index, g):
    alpha = _attribute(node, "alpha", 0.01)
    positive = t.op("Greater", [node.input[0], t.fconst(0)])
    return t.op("Where", [positive, g, t.op("Mul", [g, t.fconst(alpha)])])


def _clip(t: Tail, node, index, g):
    x = node.input[0]
    mask = t.fconst(1)
    if len(node.input) > 1 and node.input[1]:
        mask = t.as_float(t.op("Greater", [x, node.input[1]]))
    if len(node.input) > 2 and node.input[2]:
        mask = t.op("Mul", [mask, t.as_float(t.op("Less", [x, node.input[2]]))])
    return t.op("Mul", [g, mask])


def _sigmoid(t: Tail, node, index, g):
    y = node.output[0]
    return t.op("Mul", [g, t.op("Mul", [y, t.op("Sub", [t.fconst(1), y])])])


def _tanh(t: Tail, node, index, g):
    y = node.output[0]
    return t.op("Mul", [g, t.op("Sub", [t.fconst(1), t.op("Mul", [y, y])])])


def _hard_sigmoid(t: Tail, node, index, g):
    # y = clip(alpha x + beta, 0, 1): alpha where the clip does not bite, 0 where it does
    alpha, beta = float(_attribute(node, "alpha", 0.2)), float(_attribute(node, "beta", 0.5))
    inner = t.op("Add", [t.op("Mul", [node.input[0], t.fconst(alpha)]), t.fconst(beta)])
    inside = t.op("And", [t.op("Greater", [inner, t.fconst(0)]), t.op("Less", [inner, t.fconst(1)])])
    return t.op("Mul", [g, t.op("Mul", [t.as_float(inside), t.fconst(alpha)])])


def _hard_swish(t: Tail, node, index, g):
    # y = x clip(x / 6 + 1/2, 0, 1): 0 below -3, 1 above 3, (2x + 3) / 6 between
    x = node.input[0]
    slope = t.op("Add", [t.op("Mul", [x, t.fconst(1 / 3)]), t.fconst(0.5)])
    inside = t.op("Where", [t.op("Greater", [x, t.fconst(3)]), t.fconst(1), slope])
    return t.op("Mul", [g, t.op("Where", [t.op("Less", [x, t.fconst(-3)]), t.fconst(0), inside])])


def _softmax(t: Tail, node, index, g):
    y = node.output[0]
    axis = _attribute(node, "axis", -1)
    along = t.op("ReduceSum", [t.op("Mul", [g, y]), t.const(np.array([axis], np.int64), "axes")], keepdims=1)
    return t.op("Mul", [y, t.op("Sub", [g, along])])


def _log_softmax(t: Tail, node, index, g):
    axis = _attribute(node, "axis", -1)
    total = t.op("ReduceSum", [g, t.const(np.array([axis], np.int64), "axes")], keepdims=1)
    return t.op("Sub", [g, t.op("Mul", [t.op("Exp", [node.output[0]]), total])])


def _transpose(t: Tail, node, index, g):
    perm = _attribute(node, "perm")
    if perm is None:
        return t.op("Transpose", [g])
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return t.op("Transpose", [g], perm=inverse)


def _mean_over(t: Tail, x: str, g: str, axes: list[int], keepdims: bool) -> str:
    """Backward of a mean of `x` over `axes`: g spread evenly over what was averaged."""
    axes_name = t.const(np.array(axes, np.int64), "axes")
    if not keepdims:
        g = t.op("Unsqueeze", [g, axes_name])
    shape = t.op("Shape", [x])
    count = t.op("ReduceProd", [t.op("Gather", [shape, axes_name], axis=0)], keepdims=0)
    return t.op("Mul", [t.op("Expand", [g, shape]), t.op("Reciprocal", [t.as_float(count)])])


def _global_average_pool(t: Tail, node, index, g):
    rank = t.rank(node.input[0], node.op_type)
    return _mean_over(t, node.input[0], g, list(range(2, rank)), keepdims=True)


def _reduce_mean(t: Tail, node, index, g):
    axes = _attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = t.constants.get(node.input[1])
        if axes is None:
            raise UnsupportedOperator("ReduceMean with computed axes")
        axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    rank = t.rank(node.input[0], node.op_type)
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    return _mean_over(t, node.input[0], g, sorted(axes), keepdims=bool(_attribute(node, "keepdims", 1)))


def _window_sizes(t: Tail, node) -> tuple[list, list, list[int], list[int]]:
    x, y = t.per_row(node.input[0]), t.per_row(node.output[0])
    if x is None or y is None:
        raise UnsupportedOperator(f"{node.op_type} needs static shapes to be differentiated")
    if _attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedOperator(f"{node.op_type} with auto_pad is not differentiated")
    return x, y, list(_attribute(node, "kernel_shape")), list(_attribute(node, "pads", [0] * (2 * (len(x) - 2))))


def _transpose_conv(t: Tail, node, g: str, weight: str, group: int, kernel: list[int], pads: list[int]) -> str:
    """The gradient of a (strided) window operator written as ConvTranspose, sized to its input."""
    x, y = t.per_row(node.input[0]), t.per_row(node.output[0])
    assert x is not None and y is not None
    strides = list(_attribute(node, "strides", [1] * len(kernel)))
    dilations = list(_attribute(node, "dilations", [1] * len(kernel)))
    spatial = len(kernel)
    output_padding = [
        x[2 + i] - ((y[2 + i] - 1) * strides[i] - pads[i] - pads[i + spatial] + dilations[i] * (kernel[i] - 1) + 1)
        for i in range(spatial)
    ]
    return t.op(
        "ConvTranspose",
        [g, weight],
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        output_padding=output_padding,
    )


def _average_pool(t: Tail, node, index, g):
    x, y, kernel, pads = _window_sizes(t, node)
    if list(x[2:]) == kernel and not any(pads):  # a whole-map average: global pooling
        return _mean_over(t, node.input[0], g, list(range(2, len(x))), keepdims=True)
    if any(pads) and not _attribute(node, "count_include_pad", 0):
        raise UnsupportedOperator("AveragePool that leaves padding out of its count is not differentiated")
    channels = x[1]
    ones = np.full((channels, 1, *kernel), 1.0 / float(np.prod(kernel)), t.float)
    return _transpose_conv(t, node, g, t.const(ones, "window"), channels, kernel, pads)


def _max_pool(t: Tail, node, index, g):
    """The gradient goes to the input element each window took: flat indices into the input,
    from a second MaxPool of the same input asked for its Indices (the forward node stays as
    it is), summed where windows overlap."""
    again = onnx.NodeProto()
    again.CopyFrom(node)
    again.name = t.name("maxpool_indices")
    indices = t.name("maxpool_indices")
    del again.output[:]
    again.output.extend([t.name("maxpool_values"), indices])
    t.graph.node.append(again)
    x = node.input[0]
    shape = t.op("Shape", [x])
    flat = t.const(np.array([-1], np.int64), "flat")
    size = t.op("ReduceProd", [shape], keepdims=1)
    # onnxruntime's CPU ScatterElements adds no float16: a float16 tail scatters in float32
    wide = t.float_type == TensorProto.FLOAT16
    dtype, kind = (np.float32, TensorProto.FLOAT) if wide else (t.float, t.float_type)
    zeros = t.op("ConstantOfShape", [size], value=numpy_helper.from_array(np.zeros(1, dtype)))
    updates = t.op("Reshape", [t.op("Cast", [g], to=kind) if wide else g, flat])
    scattered = t.op("ScatterElements", [zeros, t.op("Reshape", [indices, flat]), updates], axis=0, reduction="add")
    gradient = t.op("Reshape", [scattered, shape])
    return t.as_float(gradient) if wide else gradient


def _conv(t: Tail, node, index, g):
    x, y, kernel, pads = _window_sizes(t, node)
    return _transpose_conv(t, node, g, node.input[1], int(_attribute(node, "group", 1)), kernel, pads)


def _batch_norm(t: Tail, node, index, g):
    scale, variance = t.constants.get(node.input[1]), t.constants.get(node.input[4])
    if scale is None or variance is None:
        raise UnsupportedOperator("BatchNormalization with computed statistics")
    epsilon = _attribute(node, "epsilon", 1e-5)
    rank = t.rank(node.input[0], node.op_type)
    factor = (scale / np.sqrt(variance + epsilon)).astype(t.float).reshape(-1, *([1] * (rank - 2)))
    return t.op("Mul", [g, t.const(factor, "bn")])


def _gemm(t: Tail, node, index, g):
    alpha = float(_attribute(node, "alpha", 1.0))
    b = node.input[1]
    b_t = b if _attribute(node, "transB", 0) else t.op("Transpose", [b])  # (B')^T
    grad = t.op("MatMul", [g, b_t])
    if alpha != 1.0:
        grad = t.op("Mul", [grad, t.fconst(alpha)])
    return t.op("Transpose", [grad]) if _attribute(node, "transA", 0) else grad


def _matmul(t: Tail, node, index, g):
    b = t.static(node.input[1])
    if b is None or len(b) != 2:
        raise UnsupportedOperator("MatMul by a weight matrix of static 2-D shape only")
    return t.op("MatMul", [g, t.op("Transpose", [node.input[1]])])


def _add(t: Tail, node, index, g):
    return t.reduce_to(g, node.input[index], node.output[0])


def _sub(t: Tail, node, index, g):
    signed = g if index == 0 else t.op("Neg", [g])
    return t.reduce_to(signed, node.input[index], node.output[0])


def _mul(t: Tail, node, index, g):
    return t.reduce_to(t.op("Mul", [g, t.other(node, index)]), node.input[index], node.output[0])


def _div(t: Tail, node, index, g):
    return t.reduce_to(t.op("Div", [g, node.input[1]]), node.input[0], node.output[0])


def _concat(t: Tail, node, index, g):
    axis = _attribute(node, "axis")
    sizes = [t.static(i) for i in node.input]
    if any(s is None for s in sizes):
        raise UnsupportedOperator("Concat needs static shapes to be differentiated")
    rank = len(sizes[0])  # type: ignore[arg-type]
    axis = axis % rank
    start = sum(s[axis] for s in sizes[:index])  # type: ignore[index]
    end = start + sizes[index][axis]  # type: ignore[index]
    return t.op(
        "Slice",
        [
            g,
            t.const(np.array([start], np.int64), "starts"),
            t.const(np.array([end], np.int64), "ends"),
            t.const(np.array([axis], np.int64), "axes"),
        ],
    )


@dataclass(frozen=True)
class Rule:
    """An operator's backward: (tail, node, which input, gradient of its output) -> the
    gradient of that input, for the inputs it differentiates."""

    backward: Callable[[Tail, onnx.NodeProto, int, str], str]
    inputs: tuple[int, ...] | None = None
    """The inputs differentiated; None: every input. A gradient asked of another (a weight
    that depends on the chosen tensor) is refused by name, in one place (Tail.gradient)."""

    def differentiates(self, index: int) -> bool:
        return self.inputs is None or index in self.inputs


FIRST = (0,)

DIFFERENTIABLE: dict[str, Rule] = {
    "Identity": Rule(_identity),
    "Dropout": Rule(_identity, FIRST),
    "Sum": Rule(_identity),
    "Flatten": Rule(_reshape_back, FIRST),
    "Reshape": Rule(_reshape_back, FIRST),
    "Squeeze": Rule(_reshape_back, FIRST),
    "Unsqueeze": Rule(_reshape_back, FIRST),
    "Relu": Rule(_relu),
    "LeakyRelu": Rule(_leaky_relu),
    "Clip": Rule(_clip, FIRST),  # the bounds are not differentiated
    "Sigmoid": Rule(_sigmoid),
    "HardSigmoid": Rule(_hard_sigmoid),
    "HardSwish": Rule(_hard_swish),
    "Tanh": Rule(_tanh),
    "Softmax": Rule(_softmax),
    "LogSoftmax": Rule(_log_softmax),
    "Transpose": Rule(_transpose),
    "GlobalAveragePool": Rule(_global_average_pool),
    "ReduceMean": Rule(_reduce_mean, FIRST),
    "AveragePool": Rule(_average_pool),
    "MaxPool": Rule(_max_pool),
    "Conv": Rule(_conv, FIRST),  # not the weights or bias
    "BatchNormalization": Rule(_batch_norm, FIRST),  # not its parameters
    "Gemm": Rule(_gemm, FIRST),  # not the weights or bias
    "MatMul": Rule(_matmul, FIRST),
    "Add": Rule(_add),
    "Sub": Rule(_sub),
    "Mul": Rule(_mul),
    "Div": Rule(_div, FIRST),  # along the numerator
    "Concat": Rule(_concat),
}
"""Operator kind -> its backward rule."""
