"""A whole-generation graph for the character LSTM: prompts in, sampled texts out, for several
rows at once, each with its own length, temperature, top-k and seed.

    prompt (B, P) int64      character indices, rows padded at the end with -1
    length, top_k, seed (B, 1) int64; temperature (B, 1) float (top_k 0: every class)
    -> chars (B, max length) int64, probabilities (B, max length, classes)

How one call runs, and why it is built by hand rather than traced:
- the prompts are read by one ONNX LSTM node over the padded batch (sequence_lens stops each
  row at its own length), not character by character in the loop;
- the loop body is the LSTM cell written out (a row of a precomputed input table, one Gemm
  for the recurrent part, the gate activations) and the dense layer: about 20 nodes, no shape
  arithmetic; its per-iteration cost is what a generated character costs;
- sampling is the tutorial's: softmax(logit / T) (the logits before the model's softmax,
  which is the same distribution as reweighting its probabilities by 1/T), then the first
  class whose cumulative probability passes one uniform draw. The draws for every step and
  row are made before the loop, from a counter-based hash (splitmix64's finaliser) of
  (seed, step): integer operations only, so a row's text depends on its own seed alone (not
  on the rows beside it) and is the same on every machine and provider. One draw per
  character rather than Gumbel noise per class keeps that table 70x smaller: at 32 rows the
  per-class noise cost a quarter of the run. (onnxruntime's Multinomial takes its seed as a
  fixed attribute.) A draw above the float32 total (rounding, about 1e-7) picks class 0.
- top-k needs a sort per step, so the graph holds two loops and an If runs the one with the
  top-k mask only when some row asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CharLstmWeights", "build_generation_graph", "PROMPT_PAD"]

PROMPT_PAD = -1
"""What pads the end of a shorter prompt in a batch."""

_U64 = TensorProto.UINT64
_I64 = TensorProto.INT64
_F32 = TensorProto.FLOAT
_node = helper.make_node


@dataclass(frozen=True)
class CharLstmWeights:
    """One LSTM layer and a dense layer over it, in PyTorch's layouts (gates i, f, g, o)."""

    w_ih: np.ndarray  # (4H, classes)
    w_hh: np.ndarray  # (4H, H)
    b_ih: np.ndarray  # (4H,)
    b_hh: np.ndarray  # (4H,)
    dense_w: np.ndarray  # (classes, H)
    dense_b: np.ndarray  # (classes,)

    @classmethod
    def from_modules(cls, lstm: Any, dense: Any) -> "CharLstmWeights":
        """From a one-layer torch nn.LSTM and the nn.Linear over it."""
        names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        tensors = [getattr(lstm, n) for n in names] + [dense.weight, dense.bias]
        return cls(*(t.detach().cpu().numpy() for t in tensors))

    @property
    def units(self) -> int:
        return self.w_hh.shape[1]

    @property
    def classes(self) -> int:
        return self.w_ih.shape[1]

    def gates(self, order: str) -> np.ndarray:
        """Row indices that put PyTorch's gate blocks (i, f, g, o) in `order`."""
        blocks = {gate: np.arange(k * self.units, (k + 1) * self.units) for k, gate in enumerate("ifgo")}
        return np.concatenate([blocks[gate] for gate in order])


def _const(name: str, value: Any) -> onnx.NodeProto:
    return _node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _initializers(w: CharLstmWeights) -> list[onnx.TensorProto]:
    onnx_order = w.gates("iofg")  # the ONNX LSTM node's gate order (i, o, f, c)
    cell_order = w.gates("ifog")  # the loop's: one Sigmoid over i, f, o, then g
    bias = (w.b_ih + w.b_hh).astype(np.float32)
    arrays = {
        "lstm_W": w.w_ih[onnx_order][None],
        "lstm_R": w.w_hh[onnx_order][None],
        "lstm_B": np.concatenate([w.b_ih[onnx_order], w.b_hh[onnx_order]])[None],
        # a character's input projection is a row of this table: no one-hot matmul in the loop
        "input_table": w.w_ih[cell_order].T + bias[cell_order],
        "recurrent_kernel": w.w_hh[cell_order].T,
        "dense_kernel": w.dense_w.T,
        "dense_bias": w.dense_b,
    }
    return [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), name) for name, a in arrays.items()]


def _uniforms() -> list[onnx.NodeProto]:
    """Nodes computing "uniforms" (steps, B, 1) in (0, 1), one per generated character of a
    row, from the int64 inputs "steps" (scalar) and "seed" (B, 1): splitmix64's finaliser of
    seed * golden + step, integer operations only. Uses the main graph's "zero" and "one"."""
    p = "uniform_"
    nodes = [
        _const(f"{p}golden", np.uint64(0x9E3779B97F4A7C15)),
        _const(f"{p}along_steps", np.array([-1, 1, 1], np.int64)),
        _const(f"{p}along_rows", np.array([1, -1, 1], np.int64)),
        _node("Range", ["zero", "steps", "one"], [f"{p}step"]),
        _node("Reshape", [f"{p}step", f"{p}along_steps"], [f"{p}step3"]),
        _node("Reshape", ["seed", f"{p}along_rows"], [f"{p}seed3"]),
        _node("Cast", [f"{p}seed3"], [f"{p}seed_u"], to=_U64),
        _node("Cast", [f"{p}step3"], [f"{p}step_u"], to=_U64),
        _node("Mul", [f"{p}seed_u", f"{p}golden"], [f"{p}keyed"]),
        _node("Add", [f"{p}keyed", f"{p}step_u"], [f"{p}z0"]),  # distinct for every step of a seed
    ]
    z = f"{p}z0"
    for i, (shift, multiplier) in enumerate(((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None))):
        nodes += [
            _const(f"{p}shift{i}", np.uint64(shift)),
            _node("BitShift", [z, f"{p}shift{i}"], [f"{p}shifted{i}"], direction="RIGHT"),
            _node("BitwiseXor", [z, f"{p}shifted{i}"], [f"{p}x{i}"]),
        ]
        if multiplier is not None:
            nodes += [
                _const(f"{p}mult{i}", np.uint64(multiplier)),
                _node("Mul", [f"{p}x{i}", f"{p}mult{i}"], [f"{p}z{i + 1}"]),
            ]
            z = f"{p}z{i + 1}"
    nodes += [
        _const(f"{p}s11", np.uint64(11)),
        _const(f"{p}half", np.float64(0.5)),
        _const(f"{p}scale", np.float64(2.0**-53)),
        _node("BitShift", [f"{p}x2", f"{p}s11"], [f"{p}bits53"], direction="RIGHT"),
        _node("Cast", [f"{p}bits53"], [f"{p}d"], to=TensorProto.DOUBLE),
        _node("Add", [f"{p}d", f"{p}half"], [f"{p}d1"]),
        _node("Mul", [f"{p}d1", f"{p}scale"], [f"{p}ud"]),
        _node("Cast", [f"{p}ud"], ["uniforms"], to=_F32),
    ]
    return nodes


def _loop_body(units: int, classes: int, top_k: bool) -> onnx.GraphProto:
    """One generated character: sample from the current logits, then advance the cell."""
    nodes = [_node("Mul", ["logits_in", "inverse_temperature"], ["scaled"])]
    if top_k:  # keep logits >= each row's k-th largest
        nodes += [
            _const("all_classes", np.array([classes], np.int64)),
            _const("minus_inf", np.float32(-np.inf)),
            _node("TopK", ["scaled", "all_classes"], ["sorted", "sorted_at"], axis=1),
            _node("GatherElements", ["sorted", "kth_index"], ["kth"], axis=1),
            _node("Less", ["scaled", "kth"], ["dropped"]),
            _node("Where", ["dropped", "minus_inf", "scaled"], ["kept"]),
        ]
    nodes += [  # inverse CDF: the first class whose cumulative probability passes the draw
        _const("class_axis", np.int64(1)),
        _node("Softmax", ["kept" if top_k else "scaled"], ["reweighted"], axis=1),
        _node("CumSum", ["reweighted", "class_axis"], ["cdf"]),
        _node("Gather", ["uniforms", "iteration"], ["draw"], axis=0),
        _node("Greater", ["cdf", "draw"], ["passed"]),
        _node("Cast", ["passed"], ["passed_u8"], to=TensorProto.UINT8),
        _node("ArgMax", ["passed_u8"], ["next"], axis=1, keepdims=0),
        _node("Gather", ["input_table", "next"], ["from_input"], axis=0),
        _node("Gemm", ["h_in", "recurrent_kernel", "from_input"], ["gates"]),
        _const("gate_split", np.array([3 * units, units], np.int64)),
        _node("Split", ["gates", "gate_split"], ["ifo_pre", "g_pre"], axis=1),
        _node("Sigmoid", ["ifo_pre"], ["ifo"]),
        _node("Tanh", ["g_pre"], ["g"]),
        _node("Split", ["ifo"], ["i", "f", "o"], axis=1, num_outputs=3),
        _node("Mul", ["f", "c_in"], ["kept_memory"]),
        _node("Mul", ["i", "g"], ["written"]),
        _node("Add", ["kept_memory", "written"], ["c_out"]),
        _node("Tanh", ["c_out"], ["c_squashed"]),
        _node("Mul", ["o", "c_squashed"], ["h_out"]),
        _node("Gemm", ["h_out", "dense_kernel", "dense_bias"], ["logits_out"]),
    ]
    rows = "rows"
    return helper.make_graph(
        nodes,
        "generated_character_top_k" if top_k else "generated_character",
        [
            helper.make_tensor_value_info("iteration", _I64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", _F32, [rows, units]),
            helper.make_tensor_value_info("c_in", _F32, [rows, units]),
            helper.make_tensor_value_info("logits_in", _F32, [rows, classes]),
        ],
        [  # the condition and the logits pass straight through: no Identity nodes to run
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", _F32, [rows, units]),
            helper.make_tensor_value_info("c_out", _F32, [rows, units]),
            helper.make_tensor_value_info("logits_out", _F32, [rows, classes]),
            helper.make_tensor_value_info("next", _I64, [rows]),
            helper.make_tensor_value_info("logits_in", _F32, [rows, classes]),
        ],
    )


def _branch(units: int, classes: int, top_k: bool) -> onnx.GraphProto:
    """An If branch: the whole loop, with or without the top-k mask."""
    tag = "top_k" if top_k else "plain"
    loop = _node(
        "Loop",
        ["steps", "", "h0", "c0", "logits0"],
        [f"{tag}_h", f"{tag}_c", f"{tag}_logits", f"{tag}_chars", f"{tag}_all_logits"],
        body=_loop_body(units, classes, top_k),
    )
    return helper.make_graph(
        [loop],
        f"generate_{tag}",
        [],
        [
            helper.make_tensor_value_info(f"{tag}_chars", _I64, None),
            helper.make_tensor_value_info(f"{tag}_all_logits", _F32, None),
        ],
    )


def build_generation_graph(weights: CharLstmWeights) -> onnx.ModelProto:
    """The batched generation graph of a one-hot LSTM + dense softmax character model."""
    units, classes = weights.units, weights.classes
    nodes = [
        _const("zero", np.int64(0)),
        _const("one", np.int64(1)),
        _const("axis0", np.array([0], np.int64)),
        _const("axis1", np.array([1], np.int64)),
        _const("depth", np.int64(classes)),
        _const("one_hot_values", np.array([0.0, 1.0], np.float32)),
        _const("class_count", np.array([[classes]], np.int64)),
        _const("tiny_temperature", np.float32(1e-6)),
        # the prompts, read in one LSTM run; a row's length is its count of non-pad characters
        _node("GreaterOrEqual", ["prompt", "zero"], ["is_character"]),
        _node("Cast", ["is_character"], ["is_character_i"], to=TensorProto.INT32),
        _node("ReduceSum", ["is_character_i", "axis1"], ["prompt_lengths"], keepdims=0),
        _node("Max", ["prompt", "zero"], ["prompt_codes"]),
        _node("OneHot", ["prompt_codes", "depth", "one_hot_values"], ["prompt_one_hot"], axis=-1),
        _node("Transpose", ["prompt_one_hot"], ["prompt_sequence"], perm=[1, 0, 2]),
        _node(
            "LSTM",
            ["prompt_sequence", "lstm_W", "lstm_R", "lstm_B", "prompt_lengths"],
            ["", "h0_seq", "c0_seq"],
            hidden_size=units,
        ),
        _node("Squeeze", ["h0_seq", "axis0"], ["h0"]),
        _node("Squeeze", ["c0_seq", "axis0"], ["c0"]),
        _node("Gemm", ["h0", "dense_kernel", "dense_bias"], ["logits0"]),
        # steps: the longest length asked for (at least one, so a loop always runs)
        _node("ReduceMax", ["length"], ["longest"], keepdims=0),
        _node("Max", ["longest", "one"], ["steps"]),
        _node("Max", ["temperature", "tiny_temperature"], ["temperature_safe"]),  # T <= 0: greedy
        _node("Reciprocal", ["temperature_safe"], ["inverse_temperature"]),
        *_uniforms(),
        # top-k: k = top_k if 0 < top_k <= classes else every class
        _node("Greater", ["top_k", "zero"], ["has_k"]),
        _node("Min", ["top_k", "class_count"], ["k_capped"]),
        _node("Where", ["has_k", "k_capped", "class_count"], ["k"]),
        _node("Sub", ["k", "one"], ["kth_index"]),
        _node("Less", ["k", "class_count"], ["masks"]),  # fewer than every class kept
        _node("Cast", ["masks"], ["masks_i"], to=_I64),
        _node("ReduceMax", ["masks_i"], ["any_mask_i"], keepdims=0),
        _node("Cast", ["any_mask_i"], ["any_mask"], to=TensorProto.BOOL),
        _node(
            "If",
            ["any_mask"],
            ["chars_by_step", "logits_by_step"],
            then_branch=_branch(units, classes, top_k=True),
            else_branch=_branch(units, classes, top_k=False),
        ),
        _node("Transpose", ["chars_by_step"], ["chars"], perm=[1, 0]),
        _node("Softmax", ["logits_by_step"], ["probabilities_by_step"], axis=-1),
        _node("Transpose", ["probabilities_by_step"], ["probabilities"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "char_generation",
        [
            helper.make_tensor_value_info("prompt", _I64, ["batch", "prompt_length"]),
            helper.make_tensor_value_info("length", _I64, ["batch", 1]),
            helper.make_tensor_value_info("temperature", _F32, ["batch", 1]),
            helper.make_tensor_value_info("top_k", _I64, ["batch", 1]),
            helper.make_tensor_value_info("seed", _I64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("chars", _I64, ["batch", "steps"]),
            helper.make_tensor_value_info("probabilities", _F32, ["batch", "steps", classes]),
        ],
        initializer=_initializers(weights),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="deepr")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model
