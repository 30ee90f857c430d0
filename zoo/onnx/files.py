"""Reading an ONNX file from elsewhere: checked by the onnx package, its shapes inferred, run
once by onnxruntime, and brought to an opset onnxruntime runs when it is too old.

Nothing here needs PyTorch: the graph is served as it is, and the graphs deepr derives from it
(Grad-CAM, features) are built in ONNX (exporters/onnx_graphs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .errors import OnnxImportError

__all__ = ["CheckedGraph", "GRADIENT_OPSET", "read_onnx_file", "tensor_shapes", "upgraded", "probe_feeds"]

_IR_FOR_OPSET = {17: 8}
"""The IR version each opset came with (onnx's versioning table)."""

MIN_RUNNABLE_OPSET = 7
"""onnxruntime runs ai.onnx from opset 7 on."""

GRADIENT_OPSET = 17
"""The opset deepr's derived graphs are written in (ScatterElements with a reduction needs 16)."""

_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class CheckedGraph:
    """A graph that passed every check, ready to copy into deepr's keeping."""

    model: onnx.ModelProto
    """With its external data inlined and, where onnxruntime needed it, a newer opset."""
    opset: int
    upgraded_from: int | None
    """The file's opset when it was converted; None when it runs as written."""
    max_upgrade_difference: float
    """Largest difference between the converted graph's outputs and the original's, relative
    to the largest output (0 when not converted)."""


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def probe_feeds(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of every input's declared shape (a free dimension is 1), in its type."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        dtype = _ONNX_TO_NUMPY.get(arg.type)
        if dtype is None:
            raise OnnxImportError(f"input {arg.name!r} has type {arg.type}, which deepr cannot feed")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.random(shape).astype(dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype)
    return feeds


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _relative(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    peak = max(float(np.abs(x).max(initial=0.0)) for x in a) or 1.0
    return max(float(np.abs(x.astype(np.float64) - y).max(initial=0.0)) for x, y in zip(a, b)) / peak


def upgraded(model: onnx.ModelProto, opset: int, path: Path) -> tuple[onnx.ModelProto, float]:
    """`model` converted to `opset` by onnx's version converter, and how far its outputs moved
    on random inputs (relative to the largest output): onnxruntime on both where it runs the
    original, onnx's reference evaluator for the original where it does not."""
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
        # IR 3 needs every initializer among the graph's inputs; graphs deepr adds nodes to
        # (new initializers) want the IR of the opset they are converted to.
        converted.ir_version = max(converted.ir_version, _IR_FOR_OPSET.get(opset, 8))
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises plain exceptions for adapters it lacks
        raise OnnxImportError(
            f"{path}: onnx's version converter cannot bring opset {_opset(model)} to {opset}: {exc}"
        ) from None
    session = _session(converted)
    feeds = probe_feeds(session)
    new = session.run(None, feeds)
    try:
        old = _session(model).run(None, feeds)
    except Exception:  # an opset onnxruntime does not run: the reference evaluator
        from onnx.reference import ReferenceEvaluator

        old = ReferenceEvaluator(model).run(None, feeds)
    return converted, _relative([np.asarray(x) for x in old], new)


def read_onnx_file(path: str | Path) -> CheckedGraph:
    """The ONNX graph at `path`, checked: OnnxImportError naming the file and the problem for
    a file that is not ONNX, fails onnx's checker or shape inference, or that onnxruntime
    cannot run even after converting its opset."""
    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))  # external data, if any, from beside the file
    except Exception as exc:  # protobuf's DecodeError, missing external data files
        raise OnnxImportError(f"{path}: not an ONNX model onnx can read ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise OnnxImportError(f"{path}: the graph has no nodes")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, or shape inference's own errors
        raise OnnxImportError(f"{path}: onnx's checker refuses it: {str(exc).splitlines()[0]}") from None
    opset = _opset(model)
    upgraded_from, difference = None, 0.0
    if opset < MIN_RUNNABLE_OPSET:
        model, difference = upgraded(model, GRADIENT_OPSET, path)
        upgraded_from, opset = opset, GRADIENT_OPSET
        if difference > 1e-5:
            raise OnnxImportError(
                f"{path}: converted from opset {upgraded_from} to {opset}, its outputs moved by {difference:.2g} of the "
                "largest: the conversion is not faithful"
            )
    _check_probe_size(model, path)
    try:
        session = _session(model)
        _check_rows(session, path)
    except OnnxImportError:
        raise
    except Exception as exc:  # onnxruntime's own error types
        raise OnnxImportError(f"{path}: onnxruntime cannot run it: {str(exc).splitlines()[0]}") from None
    return CheckedGraph(model, opset, upgraded_from, difference)


MAX_PROBE_VALUES = 1 << 28
"""The values every tensor of a probe run may hold together (1 GiB in float32): a file of a few
bytes may declare inputs of billions, which the probe would allocate. Models of the tutorial's
size hold under 2^25 at batch 1."""


def _check_probe_size(model: onnx.ModelProto, path: Path) -> None:
    """OnnxImportError when the probe run's tensors, as shape inference finds them (free
    dimensions as 1), would hold more than MAX_PROBE_VALUES values together."""
    try:
        shapes = tensor_shapes(model)
    except Exception:  # shape inference gives up: the checker passed, the run will say
        return
    total = 0
    for name, shape in shapes.items():
        values = int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape], dtype=np.float64))
        total += values
        if total > MAX_PROBE_VALUES:
            raise OnnxImportError(
                f"{path}: its tensors would hold over {MAX_PROBE_VALUES:,} values at batch 1 ({name!r} is "
                f"{shape}); deepr imports graphs whose one run fits in 1 GiB"
            )


def _batched(session: ort.InferenceSession) -> bool:
    """Whether every input and output has a free first dimension: a graph that batches."""
    args = [*session.get_inputs(), *session.get_outputs()]
    return all(a.shape and not isinstance(a.shape[0], int) for a in args)


def _check_rows(session: ort.InferenceSession, path: Path) -> None:
    """Run the graph on probe inputs and check each output against its declared shape: a
    batched graph at batch 2 must answer 2 rows (merged requests are split back by rows, so
    any other count hands one client another's rows), and fixed dims must be what they say."""
    batch = 2 if _batched(session) else None
    feeds = probe_feeds(session)
    if batch is not None:
        feeds = {k: np.concatenate([v] * batch) for k, v in feeds.items()}
    for arg, value in zip(session.get_outputs(), session.run(None, feeds)):
        shape = np.shape(value)
        if batch is not None and (not shape or shape[0] != batch):
            raise OnnxImportError(
                f"{path}: output {arg.name!r} has {shape[0] if shape else 'no'} rows for a batch of {batch}; "
                "a batched graph answers one row per input row"
            )
        declared = list(arg.shape)
        if len(declared) != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(declared, shape)):
            raise OnnxImportError(f"{path}: output {arg.name!r} is declared {declared} but has shape {list(shape)}")


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Every tensor's shape as shape inference finds it (a free dimension by its name, or "?")."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | str]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in info.type.tensor_type.shape.dim
            ]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of the graph's initializers and Constant nodes: its parameters."""
    total = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    total += int(numpy_helper.to_array(attribute.t).size)
    return total
