"""The ONNX backward builder on its own: a tail of a classifier in float16, float32 or float64
differentiated in its own type and run by onnxruntime, against a float64 central difference;
inputs a rule does not differentiate, unknown ranks and tensors no gradient reaches refused by
name; the forward graph left as it was."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx_backward import Tail, UnsupportedOperator
from zoo.onnx.files import tensor_shapes

TYPES = {np.float16: TensorProto.FLOAT16, np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}
ROWS, CLASSES = 2, 4


def classifier(dtype: type, from_activations: bool = False) -> onnx.ModelProto:
    """images (2, 2, 6, 6) -> Conv -> `a` -> Relu -> MaxPool 2x2 -> ReduceMean -> Flatten
    -> Gemm -> Softmax -> `y` (2, 4), every tensor in `dtype`; `from_activations`: the part
    from `a` on, taking `a` as its input."""
    rng = np.random.default_rng(0)
    kind = TYPES[dtype]
    weights = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(dtype), "w"),
        numpy_helper.from_array(rng.standard_normal((CLASSES, 3)).astype(dtype), "fc"),
        numpy_helper.from_array(rng.standard_normal(CLASSES).astype(dtype), "bias"),
    ]
    tail = [
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["m"], ["g"], axes=[2, 3], keepdims=1),  # onnxruntime: no float64 GAP
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    y = helper.make_tensor_value_info("y", kind, [ROWS, CLASSES])
    if from_activations:
        a = helper.make_tensor_value_info("a", kind, [ROWS, 3, 6, 6])
        graph = helper.make_graph(tail, "tail", [a], [y], weights[1:])
    else:
        x = helper.make_tensor_value_info("images", kind, [ROWS, 2, 6, 6])
        conv = helper.make_node("Conv", ["images", "w"], ["a"], pads=[1, 1, 1, 1])
        graph = helper.make_graph([conv, *tail], "classifier", [x], [y], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def with_gradient(model: onnx.ModelProto, dtype: type) -> onnx.ModelProto:
    """`model` with a `seed` input and the gradient of sum(seed * y) with respect to `a` as an output."""
    model.graph.input.append(helper.make_tensor_value_info("seed", TYPES[dtype], [ROWS, CLASSES]))
    gradient = Tail(model, "a", "y", tensor_shapes(model)).gradient("seed")
    model.graph.node.append(helper.make_node("Identity", [gradient], ["da"]))
    model.graph.output.append(helper.make_tensor_value_info("da", TYPES[dtype], [ROWS, 3, 6, 6]))
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def central_difference(a: np.ndarray, seed: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """d sum(seed * y) / d a of the float64 tail, element by element (onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    tail = ReferenceEvaluator(classifier(np.float64, from_activations=True))
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        above, below = a.copy(), a.copy()
        above[index] += step
        below[index] -= step
        y_above, y_below = tail.run(None, {"a": above})[0], tail.run(None, {"a": below})[0]
        grad[index] = (seed * (y_above - y_below)).sum() / (2 * step)
    return grad


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-6), (np.float32, 1e-4), (np.float16, 3e-2)])
def test_a_tail_in_any_float_type_is_differentiated_in_that_type(dtype, tolerance):
    """The tail from `a` (onnxruntime's CPU has no float64 Conv for the head)."""
    model = with_gradient(classifier(dtype, from_activations=True), dtype)
    a = np.random.default_rng(1).standard_normal((ROWS, 3, 6, 6)).astype(dtype).astype(np.float64)
    seed = np.eye(CLASSES)[[1, 3]]
    y, da = run(model, {"a": a.astype(dtype), "seed": seed.astype(dtype)})
    assert y.dtype == dtype and da.dtype == dtype
    expected = central_difference(a, seed)
    error = np.abs(da.astype(np.float64) - expected).max() / np.abs(expected).max()
    assert error < tolerance, f"{dtype.__name__}: relative error {error:.3g}"


def test_the_forward_nodes_are_left_as_they_were():
    model = classifier(np.float32)
    before = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    with_gradient(model, np.float32)
    after = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node][: len(before)]
    assert after == before  # MaxPool still has its one output; its indices come from a second node


def test_an_input_a_rule_does_not_differentiate_is_refused_by_name():
    """The chosen tensor feeding a convolution's weights: Conv differentiates its input 0 only."""
    weights = helper.make_tensor_value_info("weights", TensorProto.FLOAT, [1, 1, 3, 3])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3])
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="the_conv")
    relu = helper.make_node("Relu", ["weights"], ["w"])
    model = helper.make_model(
        helper.make_graph([relu, node], "g", [x, weights], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    tail = Tail(model, "w", "y", tensor_shapes(model))
    with pytest.raises(UnsupportedOperator, match=r"input 1 of Conv \(the_conv\) depends on the chosen tensor"):
        tail.gradient("y")


def test_a_tensor_no_gradient_reaches_is_refused_by_name():
    """`y` depends on `a` only through its shape."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Shape", ["a"], ["s"]), helper.make_node("Reshape", ["b", "s"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [a, b], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperator, match=r"no gradient reaches 'a'"):
        Tail(model, "a", "y", tensor_shapes(model)).gradient("y")


def test_an_unknown_rank_is_refused_rather_than_assumed():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [a], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperator, match=r"GlobalAveragePool needs the rank of 'a'"):
        Tail(model, "a", "y", {}).gradient("y")


@pytest.mark.parametrize(
    ("op", "attributes"),
    [
        ("Relu", {}),
        ("LeakyRelu", {"alpha": 0.1}),
        ("Sigmoid", {}),
        ("Tanh", {}),
        ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),  # as torch.onnx writes nn.Hardsigmoid
        ("HardSigmoid", {}),  # ONNX's defaults
        ("HardSwish", {}),
        ("Softmax", {"axis": 1}),
    ],
)
def test_each_elementwise_rule_equals_a_central_difference(op, attributes):
    """Over values spread across every piece of the function (HardSwish's three), away from its kinks."""
    from onnx.reference import ReferenceEvaluator

    a = helper.make_tensor_value_info("a", TensorProto.DOUBLE, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 8])
    seed = helper.make_tensor_value_info("seed", TensorProto.DOUBLE, [2, 8])
    graph = helper.make_graph([helper.make_node(op, ["a"], ["y"], **attributes)], "g", [a, seed], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    forward = ReferenceEvaluator(onnx.ModelProto.FromString(model.SerializeToString()))
    gradient = Tail(model, "a", "y", tensor_shapes(model)).gradient("seed")
    model.graph.output.append(helper.make_tensor_value_info(gradient, TensorProto.DOUBLE, [2, 8]))
    values = np.array([[-5.1, -3.3, -2.4, -0.7, 0.3, 1.1, 2.6, 4.8], [-4.2, -2.9, -1.3, -0.2, 0.6, 2.2, 2.95, 3.4]])
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((2, 8))
    (da,) = ReferenceEvaluator(model).run([gradient], {"a": values, "seed": weights})
    step, expected = 1e-6, np.zeros_like(values)
    for index in np.ndindex(values.shape):
        above, below = values.copy(), values.copy()
        above[index] += step
        below[index] -= step
        difference = forward.run(None, {"a": above})[0] - forward.run(None, {"a": below})[0]
        expected[index] = (weights * difference).sum() / (2 * step)
    np.testing.assert_allclose(da, expected, atol=1e-6)
