"""A whole-generation graph: an ONNX Loop around the character step graph that reads a prompt
and samples N characters in one call, with temperature, top-k and a seed as inputs.

onnxruntime's Multinomial takes its seed as a fixed attribute and has no CUDA kernel, so
sampling is Gumbel-max instead: argmax(log(p) / T + g) with g = -log(-log(u)) draws from
softmax(log(p) / T). The uniforms u come from a counter-based hash (splitmix64's finaliser)
of (seed, step, class): integer operations only, seedable per call, the same on every
machine and provider.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build_generation_graph", "GENERATION_INPUTS", "GENERATION_OUTPUTS"]

GENERATION_INPUTS = ("prompt", "length", "temperature", "top_k", "seed")
GENERATION_OUTPUTS = ("chars", "probabilities")

_U64 = TensorProto.UINT64
_I64 = TensorProto.INT64


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _uniforms(prefix: str, seed: str, step: str, classes: int) -> list[onnx.NodeProto]:
    """Nodes computing f"{prefix}u": (classes,) float32 uniforms in (0, 1) from int64 seed and step."""
    p = prefix
    mix = [np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)]
    nodes = [
        _const(f"{p}j", np.arange(classes, dtype=np.uint64)),
        _const(f"{p}golden", np.array(0x9E3779B97F4A7C15, dtype=np.uint64)),
        _const(f"{p}stride", np.array(classes, dtype=np.uint64)),
        _const(f"{p}s30", np.array(30, dtype=np.uint64)),
        _const(f"{p}s27", np.array(27, dtype=np.uint64)),
        _const(f"{p}s31", np.array(31, dtype=np.uint64)),
        _const(f"{p}s11", np.array(11, dtype=np.uint64)),
        _const(f"{p}m1", np.array(mix[0], dtype=np.uint64)),
        _const(f"{p}m2", np.array(mix[1], dtype=np.uint64)),
        _const(f"{p}scale", np.array(2.0**-53, dtype=np.float64)),
        _const(f"{p}half", np.array(0.5, dtype=np.float64)),
        helper.make_node("Cast", [seed], [f"{p}seed_u"], to=_U64),
        helper.make_node("Cast", [step], [f"{p}step_u"], to=_U64),
        # counter = (seed * golden) + step * classes + j: distinct for every (step, class)
        helper.make_node("Mul", [f"{p}seed_u", f"{p}golden"], [f"{p}a"]),
        helper.make_node("Mul", [f"{p}step_u", f"{p}stride"], [f"{p}b"]),
        helper.make_node("Add", [f"{p}a", f"{p}b"], [f"{p}c"]),
        helper.make_node("Add", [f"{p}c", f"{p}j"], [f"{p}z0"]),
    ]
    z = f"{p}z0"
    for i, (shift, mult) in enumerate(((f"{p}s30", f"{p}m1"), (f"{p}s27", f"{p}m2"))):
        nodes += [
            helper.make_node("BitShift", [z, shift], [f"{p}sh{i}"], direction="RIGHT"),
            helper.make_node("BitwiseXor", [z, f"{p}sh{i}"], [f"{p}x{i}"]),
            helper.make_node("Mul", [f"{p}x{i}", mult], [f"{p}z{i + 1}"]),
        ]
        z = f"{p}z{i + 1}"
    nodes += [
        helper.make_node("BitShift", [z, f"{p}s31"], [f"{p}sh2"], direction="RIGHT"),
        helper.make_node("BitwiseXor", [z, f"{p}sh2"], [f"{p}z3"]),
        helper.make_node("BitShift", [f"{p}z3", f"{p}s11"], [f"{p}top53"], direction="RIGHT"),  # 53 random bits
        helper.make_node("Cast", [f"{p}top53"], [f"{p}d"], to=TensorProto.DOUBLE),
        helper.make_node("Add", [f"{p}d", f"{p}half"], [f"{p}d1"]),
        helper.make_node("Mul", [f"{p}d1", f"{p}scale"], [f"{p}ud"]),
        helper.make_node("Cast", [f"{p}ud"], [f"{p}u"], to=TensorProto.FLOAT),
    ]
    return nodes


def build_generation_graph(step: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap a step graph (char_index (B, 1), h, c -> probabilities, h_out, c_out) in a Loop.

    Inputs: prompt (P,) int64 character indices, length (1,) int64, temperature (1,) float,
    top_k (1,) int64 (0: all classes), seed (1,) int64. Outputs: chars (length,) int64 and
    the step-by-step probabilities (length, classes) the samples were drawn from (before
    reweighting).
    """
    graph = step.graph
    classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    units = graph.input[1].type.tensor_type.shape.dim[1].dim_value
    p = "gen_"
    # -- the loop body: one step, then the next character (forced from the prompt, or sampled)
    body_nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    rename = {
        "char_index": "cur",
        "h": "h_in",
        "c": "c_in",
        "probabilities": "probs",
        "h_out": "h_next",
        "c_out": "c_next",
    }
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(n, n) for n in node.input]
        copy.output[:] = [rename.get(n, n) for n in node.output]
        body_nodes.append(copy)
    body_nodes += [
        _const(f"{p}tiny", np.array(1e-30, np.float32)),
        _const(f"{p}one", np.array(1, np.int64)),
        _const(f"{p}zero", np.array(0, np.int64)),
        _const(f"{p}classes", np.array([classes], np.int64)),
        _const(f"{p}neg_inf", np.array(-np.inf, np.float32)),
        _const(f"{p}shape11", np.array([1, 1], np.int64)),
        helper.make_node("Max", ["probs", f"{p}tiny"], [f"{p}pc"]),
        helper.make_node("Log", [f"{p}pc"], [f"{p}logp"]),
        helper.make_node("Div", [f"{p}logp", "temperature"], [f"{p}logits"]),  # (1, classes)
        # top-k: k = top_k if 0 < top_k <= classes else classes; keep logits >= the k-th largest
        helper.make_node("Greater", ["top_k", f"{p}zero"], [f"{p}has_k"]),
        helper.make_node("Min", ["top_k", f"{p}classes"], [f"{p}k_min"]),
        helper.make_node("Where", [f"{p}has_k", f"{p}k_min", f"{p}classes"], [f"{p}k"]),
        helper.make_node("TopK", [f"{p}logits", f"{p}k"], [f"{p}top_values", f"{p}top_indices"], axis=1),
        helper.make_node("Sub", [f"{p}k", f"{p}one"], [f"{p}k_last"]),
        helper.make_node("Gather", [f"{p}top_values", f"{p}k_last"], [f"{p}kth"], axis=1),  # (1, 1)
        helper.make_node("Less", [f"{p}logits", f"{p}kth"], [f"{p}dropped"]),
        helper.make_node("Where", [f"{p}dropped", f"{p}neg_inf", f"{p}logits"], [f"{p}kept"]),
        *_uniforms(p, "seed", "iteration", classes),
        helper.make_node("Log", [f"{p}u"], [f"{p}lu"]),
        helper.make_node("Neg", [f"{p}lu"], [f"{p}nlu"]),
        helper.make_node("Log", [f"{p}nlu"], [f"{p}lnlu"]),
        helper.make_node("Neg", [f"{p}lnlu"], [f"{p}gumbel"]),  # (classes,)
        helper.make_node("Add", [f"{p}kept", f"{p}gumbel"], [f"{p}noisy"]),
        helper.make_node("ArgMax", [f"{p}noisy"], [f"{p}sampled"], axis=1, keepdims=1),  # (1, 1)
        # while reading the prompt, the next character is the prompt's own
        helper.make_node("Add", ["iteration", f"{p}one"], [f"{p}next_pos"]),
        helper.make_node("Less", [f"{p}next_pos", "prompt_length"], [f"{p}forced"]),
        helper.make_node("Sub", ["prompt_length", f"{p}one"], [f"{p}last_pos"]),
        helper.make_node("Min", [f"{p}next_pos", f"{p}last_pos"], [f"{p}pos"]),
        helper.make_node("Gather", ["prompt", f"{p}pos"], [f"{p}prompt_next"]),
        helper.make_node("Reshape", [f"{p}prompt_next", f"{p}shape11"], [f"{p}prompt_next11"]),
        helper.make_node("Where", [f"{p}forced", f"{p}prompt_next11", f"{p}sampled"], ["next"]),
        helper.make_node("Identity", ["next"], ["next_scan"]),
        helper.make_node("Identity", ["probs"], ["probs_scan"]),
    ]
    f32 = TensorProto.FLOAT
    body = helper.make_graph(
        body_nodes,
        "generation_step",
        [
            helper.make_tensor_value_info("iteration", _I64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", f32, [1, units]),
            helper.make_tensor_value_info("c_in", f32, [1, units]),
            helper.make_tensor_value_info("cur", _I64, [1, 1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_next", f32, [1, units]),
            helper.make_tensor_value_info("c_next", f32, [1, units]),
            helper.make_tensor_value_info("next", _I64, [1, 1]),
            helper.make_tensor_value_info("next_scan", _I64, [1, 1]),
            helper.make_tensor_value_info("probs_scan", f32, [1, classes]),
        ],
    )
    # -- the main graph: prompt length, trip count, zero state, the loop, and the sampled tail
    main_nodes = [
        _const("true", np.array(True)),
        _const("zeros_state", np.zeros((1, units), np.float32)),
        _const("one", np.array([1], np.int64)),
        _const("start0", np.array([0], np.int64)),
        _const("shape11", np.array([1, 1], np.int64)),
        _const("big", np.array([2**62], np.int64)),
        helper.make_node("Shape", ["prompt"], ["prompt_length1"]),
        helper.make_node("Squeeze", ["prompt_length1"], ["prompt_length"]),
        helper.make_node("Sub", ["prompt_length1", "one"], ["primer"]),  # steps that only read the prompt
        helper.make_node("Add", ["primer", "length"], ["trips1"]),
        helper.make_node("Squeeze", ["trips1"], ["trips"]),
        helper.make_node("Slice", ["prompt", "start0", "one"], ["first"]),
        helper.make_node("Reshape", ["first", "shape11"], ["first11"]),
        helper.make_node(
            "Loop",
            ["trips", "true", "zeros_state", "zeros_state", "first11"],
            ["h_end", "c_end", "last", "all_next", "all_probs"],
            body=body,
        ),
        _const("flat", np.array([-1], np.int64)),
        helper.make_node("Reshape", ["all_next", "flat"], ["all_chars"]),
        helper.make_node("Slice", ["all_chars", "primer", "big"], ["chars"]),
        _const("probs_shape", np.array([-1, classes], np.int64)),
        helper.make_node("Reshape", ["all_probs", "probs_shape"], ["probs_flat"]),
        helper.make_node("Slice", ["probs_flat", "primer", "big"], ["probabilities"]),
    ]
    main = helper.make_graph(
        main_nodes,
        "char_generation",
        [
            helper.make_tensor_value_info("prompt", _I64, ["prompt_length"]),
            helper.make_tensor_value_info("length", _I64, [1]),
            helper.make_tensor_value_info("temperature", f32, [1]),
            helper.make_tensor_value_info("top_k", _I64, [1]),
            helper.make_tensor_value_info("seed", _I64, [1]),
        ],
        [
            helper.make_tensor_value_info("chars", _I64, ["length"]),
            helper.make_tensor_value_info("probabilities", f32, ["length", classes]),
        ],
        initializer=list(graph.initializer),
    )
    model = helper.make_model(
        main, opset_imports=[helper.make_opsetid("", 18)], producer_name="deepr", ir_version=step.ir_version
    )
    onnx.checker.check_model(model, full_check=True)
    return model
