"""The graphs deepr serves for an imported ONNX model (zoo.onnx): the model itself, its
Grad-CAM graph at any 4-D tensor, a feature graph of named tensors, and int8.

Each derived graph is the imported graph with nodes added, never a re-implementation of it:
the forward part is the file's own operators, so its scores are checked to equal the file's
outputs (1e-5 of the largest), and Grad-CAM's backward part is written in ONNX
(exporters/onnx_backward.py), checked at export against a directional finite difference.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from serving.protocol.datatypes import ONNX_TO_V2, V2_TO_CONFIG
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import (
    GRADCAM_SUFFIX,
    LABELS_KEY,
    LAYER_KEY,
    LAYERS_KEY,
    OUTPUTS_KEY,
    PREPROCESSING_KEY,
    SECTION_KEY,
    encode_fact,
)
from zoo import get_model_spec
from zoo.onnx.files import GRADIENT_OPSET, probe_feeds, tensor_shapes, upgraded
from zoo.onnx.store import ImportedOnnx, imported_onnx
from zoo.onnx.tensors import NoPictureTensor, default_gradcam_tensor, picture_tensors

from .errors import ExportError, UnknownLayerError, quoted
from .gradcam import GRADCAM_OUTPUTS
from .onnx_backward import GraphBuilder, Tail, UnsupportedOperator
from .pipeline import ExportResult
from .repository import LABELS_FILE, add_to_repository, serving_config
from .validate import ValidationReport

__all__ = [
    "default_gradcam_tensor",
    "export_imported",
    "export_imported_features",
    "export_imported_gradcam",
    "picture_tensors",
]

_NARROW_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
"""The float types the finite-difference check widens to float64."""


def _record(name: str) -> tuple[ImportedOnnx, Path]:
    found = imported_onnx(name)
    if found is None:
        raise ExportError(f"{name} is not an imported ONNX model")
    return found


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _config_type(arg) -> int:
    return mc.DataType.Value(V2_TO_CONFIG[ONNX_TO_V2[arg.type]])


def _facts(record: ImportedOnnx) -> dict[str, str]:
    facts = {
        LABELS_KEY: encode_fact(list(record.classes)),
        SECTION_KEY: get_model_spec(record.name).section,
        OUTPUTS_KEY: record.outputs,
    }
    if record.preprocessing:
        facts[PREPROCESSING_KEY] = record.preprocessing
    return facts


def _write(model: onnx.ModelProto, config: mc.ModelConfig, facts: dict[str, str], repository, labels, version):
    for key, value in facts.items():
        config.parameters[key].string_value = value
    del model.metadata_props[:]
    for key, value in facts.items():
        if key != SECTION_KEY:
            model.metadata_props.add(key=key, value=value)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "model.onnx"
        onnx.save(model, str(file))
        return add_to_repository(Path(repository), config, file, labels=labels, version=version)


def _config_for(model: onnx.ModelProto, name: str, batched: bool, max_batch_size: int) -> mc.ModelConfig:
    """Inputs and outputs from the graph, as the server would complete them."""
    config = serving_config(name, max_batch_size if batched else 0)
    session = _session(model)
    for args, entries in ((session.get_inputs(), config.input), (session.get_outputs(), config.output)):
        for arg in args:
            dims = arg.shape[1:] if batched else arg.shape
            entries.add(
                name=arg.name, data_type=_config_type(arg), dims=[d if isinstance(d, int) else -1 for d in dims]
            )
    return config


def export_imported(
    name: str, repository: str | Path, *, max_batch_size: int = 64, version: int | None = None
) -> ExportResult:
    """The imported graph itself into `repository`, with its labels and preprocessing."""
    start = time.perf_counter()
    record, file = _record(name)
    model = onnx.load(str(file))
    config = _config_for(model, name, record.batched, max_batch_size)
    if record.preprocessing and config.input:
        layout = json.loads(record.preprocessing)["layout"]
        config.input[0].format = mc.ModelInput.FORMAT_NHWC if layout == "NHWC" else mc.ModelInput.FORMAT_NCHW
    config.output[0].label_filename = LABELS_FILE
    version_dir = _write(model, config, _facts(record), repository, record.classes, version)
    served = _session(onnx.load(str(version_dir / "model.onnx")))
    feeds = probe_feeds(served)
    difference = _difference(_session(onnx.load(str(file))).run(None, feeds), served.run(None, feeds))
    shapes = (tuple(next(iter(feeds.values())).shape),)
    return ExportResult(
        name,
        version_dir,
        ValidationReport(shapes, difference[0], difference[1], 0.0, 1e-5),
        time.perf_counter() - start,
    )


def _difference(expected: Sequence[np.ndarray], found: Sequence[np.ndarray]) -> tuple[float, float]:
    absolute = max(float(np.abs(np.asarray(a, np.float64) - b).max(initial=0.0)) for a, b in zip(expected, found))
    peak = max(float(np.abs(a).max(initial=0.0)) for a in expected) or 1.0
    return absolute, absolute / peak


def _gradient_model(file: Path) -> tuple[onnx.ModelProto, float]:
    """The imported graph at the opset the backward rules are written in (converted and checked
    when older); the conversion's relative output difference."""
    model = onnx.load(str(file))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= GRADIENT_OPSET:
        return model, 0.0
    converted, difference = upgraded(model, GRADIENT_OPSET, file)
    if difference > 1e-5:
        raise ExportError(f"converting to opset {GRADIENT_OPSET} moved the outputs by {difference:.2g} of the largest")
    return converted, difference


def _value_info(name: str, elem_type: int, shape: Sequence) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [d if isinstance(d, int) else None for d in shape])


def export_imported_gradcam(
    name: str,
    repository: str | Path,
    *,
    layer: str | None = None,
    max_batch_size: int = 64,
    version: int | None = None,
) -> tuple[ExportResult, str]:
    """Add `<name>_gradcam` to `repository`: images and class_index (batch, 1) int64 (-1: the
    top class) in; scores, activations, gradients and heatmap out, as the zoo's Grad-CAM
    graphs. `layer` names the tensor (default: default_gradcam_tensor). Returns the export
    and the tensor used."""
    start = time.perf_counter()
    record, file = _record(name)
    model, _ = _gradient_model(file)
    try:
        tensor = layer or default_gradcam_tensor(model)
    except NoPictureTensor as exc:
        raise ExportError(str(exc)) from None
    candidates = picture_tensors(model)
    if tensor not in candidates:
        shown = ", ".join(candidates[-8:])
        raise UnknownLayerError(f"{name} has no 4-D activation {quoted(tensor)}; the last of them: {shown}")
    shapes = tensor_shapes(model)
    output = record.output_name
    out_shape = shapes[output]
    classes = len(record.classes)
    graph = model.graph
    builder = GraphBuilder(model)
    try:
        tail = Tail(model, tensor, output, shapes, builder)
    except ValueError as exc:  # UnsupportedOperator included: a tensor of no float type
        raise ExportError(f"{name}: Grad-CAM at {tensor!r}: {exc}") from None
    graph.input.append(_value_info("class_index", TensorProto.INT64, [out_shape[0], 1]))
    scores, seed = _class_score_target(builder, output, "class_index", classes, tail.float)
    try:
        gradients = tail.gradient(seed)
    except UnsupportedOperator as exc:
        raise ExportError(f"{name}: Grad-CAM at {tensor!r}: {exc}") from None
    heatmap = _gradcam_heatmap(builder, tensor, gradients)
    renames = dict(zip(GRADCAM_OUTPUTS, (scores, tensor, gradients, heatmap)))
    del graph.output[:]
    for out_name, source in renames.items():
        graph.node.append(helper.make_node("Identity", [source], [out_name]))
    a_shape = shapes[tensor]
    graph.output.extend(
        [
            _value_info("scores", tail.float_type, [out_shape[0], classes]),
            _value_info("activations", tail.float_type, a_shape),
            _value_info("gradients", tail.float_type, a_shape),
            _value_info("heatmap", tail.float_type, [a_shape[0], a_shape[2], a_shape[3]]),
        ]
    )
    _rename_input(model, record.input_name, "images")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # a rule made a graph onnx refuses: a deepr bug, said plainly
        raise ExportError(f"{name}: the Grad-CAM graph at {tensor!r} is not valid ONNX: {exc}") from None
    report = _check_gradcam(model, file, record, tensor)
    config = _config_for(model, f"{name}{GRADCAM_SUFFIX}", record.batched, max_batch_size)
    facts = {**_facts(record), LAYER_KEY: tensor}
    version_dir = _write(model, config, facts, repository, None, version)
    return ExportResult(version_dir.parent.name, version_dir, report, time.perf_counter() - start), tensor


def _class_score_target(
    builder: GraphBuilder, output: str, class_index: str, classes: int, dtype: type
) -> tuple[str, str]:
    """What Grad-CAM explains, apart from how: each row's score of its class in `class_index`
    (its top class where that is -1), as pytorch-grad-cam's ClassifierOutputTarget. Returns the
    scores (rows, classes) and the seed of the backward pass: d(score)/d(output), a one-hot in
    the output's shape and float type."""
    scores = builder.op("Reshape", [output, builder.const(np.array([0, -1], np.int64), "rows")], "scores")
    top = builder.op("ArgMax", [scores], axis=1, keepdims=1)
    unset = builder.op("Less", [class_index, builder.const(np.int64(0))])
    chosen = builder.op("Where", [unset, top, class_index])
    values = builder.const(np.array([0, 1], dtype), "values")
    one_hot = builder.op("OneHot", [chosen, builder.const(np.array(classes, np.int64), "depth"), values], axis=-1)
    return scores, builder.op("Reshape", [one_hot, builder.op("Shape", [output])], "seed")


def _gradcam_heatmap(builder: GraphBuilder, activations: str, gradients: str) -> str:
    """Grad-CAM's map from a tensor's activations and gradients: each channel weighted by its
    mean gradient, summed over the channels, negative evidence cut (ReLU)."""
    weights = builder.mean(gradients, [2, 3])
    channels = builder.const(np.array([1], np.int64), "c")
    cam = builder.op("ReduceSum", [builder.op("Mul", [weights, activations]), channels], keepdims=0)
    return builder.op("Relu", [cam], "heatmap")


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]


def _check_gradcam(model: onnx.ModelProto, file: Path, record: ImportedOnnx, tensor: str) -> ValidationReport:
    """Scores equal to the imported file's outputs (1e-5 of the largest), and the gradient
    agreeing with a central difference of the score along a random direction of the tensor."""
    session = _session(model)
    original = _session(onnx.load(str(file)))
    feeds = probe_feeds(original, seed=1)
    images = next(iter(feeds.values()))
    rows = images.shape[0]
    classes = np.full((rows, 1), -1, np.int64)
    scores, activations, gradients = session.run(
        ["scores", "activations", "gradients"], {"images": images, "class_index": classes}
    )
    expected = original.run(None, feeds)[0].reshape(rows, -1)
    absolute, relative = _difference([expected], [scores])
    if relative > 1e-5:
        raise ExportError(
            f"the Grad-CAM graph's scores differ from the imported graph's by {relative:.2g} of the largest"
        )
    # d score / d A along a direction v: <gradients, v> against a central difference of the
    # tail in float64 (onnx's reference evaluator), where a step small enough to cross no
    # ReLU's kink still rises far above rounding. Rows are checked one at a time.
    tail_model, also = _tail_model(onnx.load(str(file)), tensor, record.output_name)
    try:
        evaluator = _float64_evaluator(tail_model)
    except Exception:  # an operator the reference evaluator lacks: the tests' references stand alone
        return ValidationReport((images.shape,), absolute, relative, 0.0, 1e-5)
    direction = np.random.default_rng(2).standard_normal(activations.shape[1:])
    top = int(scores[0].argmax())
    epsilon = 1e-6 * float(np.abs(activations[:1]).max() or 1.0)

    def score(a: np.ndarray) -> float:
        feeds64 = {tensor: a[None]}
        feeds64.update({name: feeds[name][:1].astype(np.float64) for name in also})
        out = evaluator.run(None, feeds64)[0].reshape(1, -1)
        return float(out[0, top])

    a0 = activations[0].astype(np.float64)
    above, below = score(a0 + epsilon * direction), score(a0 - epsilon * direction)
    if abs(above - below) <= 1e-12 * max(abs(above), abs(below)):  # relative: a score may be tiny, not flat
        warnings.warn(
            f"{record.name}: its score does not change with {tensor!r} (flat in float64: constant weights?); the "
            "Grad-CAM graph is exported, and its heatmaps are the float32 rounding of zero",
            stacklevel=2,
        )
        return ValidationReport((images.shape,), absolute, relative, 0.0, 1e-5)
    numeric = (above - below) / (2 * epsilon)
    terms = gradients[0].astype(np.float64) * direction
    analytic = float(terms.sum())
    # Within 0.1% of the derivative (3% for a float16 graph, whose own rounding is 0.05%
    # per operation), or of the sum's own terms where they cancel (a score flat in the
    # tensor, as graphs with constant weights have: float32 leaves a residue).
    tolerance = 3e-2 if gradients.dtype == np.float16 else 1e-3
    if abs(numeric - analytic) > tolerance * max(abs(analytic), abs(numeric), float(np.abs(terms).sum()), 1e-12):
        raise ExportError(
            f"the Grad-CAM gradient at {tensor!r} disagrees with a finite difference of the graph: "
            f"{analytic:.6g} against {numeric:.6g}"
        )
    return ValidationReport((images.shape,), absolute, relative, 0.0, 1e-5)


def _float64_evaluator(model: onnx.ModelProto):
    """onnx's reference evaluator over `model` with every float tensor (float32 or float16) in float64."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    doubled = copy.deepcopy(model)
    for index, init in enumerate(doubled.graph.initializer):
        if init.data_type in _NARROW_FLOATS:
            doubled.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name)
            )
    for node in doubled.graph.node:
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.t.data_type in _NARROW_FLOATS:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float64)))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in _NARROW_FLOATS:
                attribute.i = TensorProto.DOUBLE
    for value in [*doubled.graph.input, *doubled.graph.output, *doubled.graph.value_info]:
        if value.type.tensor_type.elem_type in _NARROW_FLOATS:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return ReferenceEvaluator(doubled)


def _tail_model(model: onnx.ModelProto, tensor: str, output: str) -> tuple[onnx.ModelProto, list[str]]:
    """The part of `model` from `tensor` to `output`, taking `tensor` as an input, with the
    nodes that compute its other inputs (a Reshape's shape from the graph's input, say);
    returns it and the graph inputs it still needs."""
    shapes = tensor_shapes(model)
    extracted = copy.deepcopy(model)
    tail = Tail(extracted, tensor, output, shapes)
    keep = {id(n) for n in tail.nodes}
    producer = {o: n for n in extracted.graph.node for o in n.output}
    weights = {i.name for i in extracted.graph.initializer}
    graph_inputs = {i.name for i in extracted.graph.input} - weights
    dependent = tail.dependent
    wanted = [i for n in tail.nodes for i in n.input if i and i not in dependent and i not in weights]
    needed_inputs: list[str] = []
    while wanted:
        name = wanted.pop()
        node = producer.get(name)
        if node is None:
            if name in graph_inputs and name not in needed_inputs:
                needed_inputs.append(name)
            continue
        if id(node) not in keep:
            keep.add(id(node))
            wanted.extend(i for i in node.input if i and i not in weights)
    nodes = [n for n in extracted.graph.node if id(n) in keep]
    del extracted.graph.node[:]
    extracted.graph.node.extend(nodes)
    originals = {i.name: i for i in extracted.graph.input}
    del extracted.graph.input[:]
    extracted.graph.input.append(_value_info(tensor, tail.float_type, shapes[tensor]))
    extracted.graph.input.extend(originals[name] for name in needed_inputs)
    return extracted, needed_inputs


def export_imported_features(
    name: str,
    repository: str | Path,
    *,
    layers: Sequence[str] | None = None,
    max_batch_size: int = 64,
    version: int | None = None,
) -> ExportResult:
    """Add `<name>_features` to `repository`: the named tensors (default: every 4-D
    activation) as outputs of the imported graph, its input renamed `images`."""
    from serving.protocol.schema import FEATURES_SUFFIX

    start = time.perf_counter()
    record, file = _record(name)
    model = onnx.load(str(file))
    available = picture_tensors(model)
    chosen = list(layers) if layers else available
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise UnknownLayerError(
            f"{name} has no 4-D activation {quoted(unknown[0])}; it has {', '.join(available[:12])} ..."
        )
    shapes = tensor_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(_value_info(t, TensorProto.FLOAT, shapes[t]) for t in chosen)
    _rename_input(model, record.input_name, "images")
    session = _session(model)
    feeds = probe_feeds(session)
    features = session.run(None, feeds)
    reference = onnx.load(str(file))
    del reference.graph.output[:]
    reference.graph.output.extend(_value_info(t, TensorProto.FLOAT, shapes[t]) for t in chosen)
    expected = _session(reference).run(None, {record.input_name: feeds["images"]})
    absolute, relative = _difference(expected, features)
    config = _config_for(model, f"{name}{FEATURES_SUFFIX}", record.batched, max_batch_size)
    facts = {**_facts(record), LAYERS_KEY: encode_fact(chosen)}
    version_dir = _write(model, config, facts, repository, None, version)
    report = ValidationReport((feeds["images"].shape,), absolute, relative, 0.0, 1e-5)
    return ExportResult(version_dir.parent.name, version_dir, report, time.perf_counter() - start)
