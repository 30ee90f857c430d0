"""Imported ONNX models kept by name, so the zoo's commands take them like its own.

`import_onnx("m.onnx", "m", ...)` checks the file (zoo.onnx.files), keeps the checked graph
in `$DEEPR_HOME/onnx/m/` (default ~/.cache/deepr/onnx) as one file, with `import.json`
(labels, preprocessing, where it came from) and registers `m`; `import zoo` registers every
model imported before, so `deepr summary m`, `deepr models` and `deepr export m --gradcam`
find it. An imported graph has no PyTorch module: the graph is the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from serving.protocol.preprocessing import FRAMINGS, ImagePreprocessing

from .._imports import forget, imports_home, keep, name_problem, read_record, register_folders
from .._registry import ModelSpec
from .errors import OnnxImportError
from .files import read_onnx_file, tensor_shapes
from .summary import onnx_summary

__all__ = [
    "OUTPUT_KINDS",
    "ImportedOnnx",
    "forget_onnx_import",
    "import_onnx",
    "imported_onnx",
    "onnx_home",
    "register_imported_onnx",
]

_GRAPH = "model.onnx"
LAYOUTS = ("nchw", "nhwc")


def onnx_home() -> Path:
    """Where imported ONNX models are kept: $DEEPR_HOME/onnx (default ~/.cache/deepr/onnx)."""
    return imports_home("onnx")


@dataclass(frozen=True)
class ImportedOnnx:
    """What `import.json` records about one imported ONNX model."""

    name: str
    source: str
    input_name: str
    output_name: str
    input_shape: tuple[int | None, ...]
    """One example's shape, without the batch axis when the graph batches."""
    batched: bool
    """The graph's first axis is free on its input and output: a batch."""
    classes: tuple[str, ...]
    preprocessing: str
    """ImagePreprocessing JSON for a picture model, "" otherwise."""
    opset: int
    upgraded_from: int | None = None
    outputs: str = "probabilities"
    """What the output holds: "probabilities" or "logits" (shown through a softmax)."""

    def picture_preprocessing(self) -> ImagePreprocessing | None:
        return ImagePreprocessing.from_json(self.preprocessing) if self.preprocessing else None

    @classmethod
    def read(cls, folder: Path) -> "ImportedOnnx":
        return cls(**read_record(folder))


def _no_module(record: ImportedOnnx, **options: Any) -> Any:
    raise TypeError(
        f"{record.name} is an imported ONNX graph: it has no PyTorch module; deepr exports and serves the graph "
        "itself (deepr export NAME, --gradcam, --features, --precision int8)"
    )


def _spec(record: ImportedOnnx, folder: Path) -> ModelSpec:
    return ModelSpec(
        name=record.name,
        builder=functools.partial(_no_module, record),
        section=f"imported from ONNX ({Path(record.source).name})",
        input_shape=record.input_shape,
        dataset="",
        description=f"imported from {record.source}",
        classes=record.classes,
        weights_included=True,
        onnx_file=str(folder / _GRAPH),
        summarize=functools.partial(onnx_summary, folder / _GRAPH, record.name),
    )


def _picture(
    shape: Sequence[int | str], layout: str | None, scale: float, mean, std, framing: str | None
) -> tuple[ImagePreprocessing | None, str]:
    """The preprocessing of a graph whose input is one picture per row, and the layout found."""
    if len(shape) != 4:
        return None, ""
    channels_first = shape[1] in (1, 3)
    channels_last = shape[3] in (1, 3)
    chosen = layout or ("nchw" if channels_first else "nhwc" if channels_last else "")
    if not chosen:
        return None, ""
    height, width, channels = (shape[2], shape[3], shape[1]) if chosen == "nchw" else (shape[1], shape[2], shape[3])
    if not all(isinstance(d, int) and d > 0 for d in (height, width, channels)) or channels not in (1, 3):
        raise OnnxImportError(
            f"input shape {list(shape)} as {chosen.upper()}: pictures need fixed height, width and 1 or 3 channels"
        )
    try:
        preprocessing = ImagePreprocessing(
            size=(int(height), int(width)),
            color_mode="L" if channels == 1 else "RGB",
            scale=scale,
            mean=tuple(mean) if mean else None,
            std=tuple(std) if std else None,
            layout=chosen.upper(),
            background="dark" if framing == "mnist" else None,
            framing=framing,
        )
    except ValueError as exc:
        raise OnnxImportError(f"preprocessing: {exc}") from None
    return preprocessing, chosen


OUTPUT_KINDS = ("probabilities", "logits")
_PROBABILITY_OPERATORS = {"Softmax", "Sigmoid"}
"""Operators whose outputs are probabilities: a graph ending in one answers them."""


def import_onnx(
    path: str | Path,
    name: str,
    *,
    labels: Sequence[str] | None = None,
    layout: str | None = None,
    scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    framing: str | None = None,
    outputs: str | None = None,
    home: Path | None = None,
) -> ImportedOnnx:
    """Check the ONNX classifier at `path` and keep it as `name` in the zoo. Pictures (a 4-D
    input with 1 or 3 channels) are prepared as `scale` (default 1/255), `mean`, `std`,
    `layout` ("nchw" or "nhwc"; default: where the channels are) and `framing` ("mnist", or
    "none") say; `labels`: one per class; `outputs`: "probabilities" or "logits" (default: as
    the graph's last operator says: Softmax or Sigmoid, probabilities). Importing again under
    a name kept before keeps what is not given anew: its labels and picture preprocessing."""
    if problem := name_problem(name):
        raise OnnxImportError(problem)
    if layout is not None and layout not in LAYOUTS:
        raise OnnxImportError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if framing is not None and framing not in (*FRAMINGS, "none"):
        raise OnnxImportError(f"--framing {framing!r}: expected one of {', '.join(FRAMINGS)} or none")
    if outputs is not None and outputs not in OUTPUT_KINDS:
        raise OnnxImportError(f"--outputs {outputs!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    before = _kept_before(name, home)
    old = before.picture_preprocessing() if before is not None else None
    if old is not None:  # a new import of a name keeps what is not said anew
        mean = old.mean if mean is None else mean
        std = old.std if std is None else std
        scale = old.scale if scale is None else scale
        framing = (old.framing or "none") if framing is None else framing
    if labels is None and before is not None:
        labels = before.classes
    scale = 1 / 255 if scale is None else scale
    framing = None if framing == "none" else framing
    checked = read_onnx_file(path)
    model = checked.model
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise OnnxImportError(
            f"{path}: deepr imports classifiers of one input and one output; this graph has inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in model.graph.output]}"
        )
    shapes = tensor_shapes(model)
    in_shape, out_shape = shapes.get(inputs[0].name, []), shapes.get(model.graph.output[0].name, [])
    batched = bool(in_shape and out_shape) and not isinstance(in_shape[0], int) and not isinstance(out_shape[0], int)
    preprocessing, layout = _picture(in_shape, layout, scale, mean, std, framing)
    if framing == "mnist" and (preprocessing is None or preprocessing.color_mode != "L"):
        raise OnnxImportError(f"--framing mnist is for models of grey pictures; this one takes {in_shape}")
    negative = [d for d in [*in_shape, *out_shape] if isinstance(d, int) and d < 0]
    if negative:
        raise OnnxImportError(
            f"{path}: a dimension of {negative[0]}: input {in_shape}, output {out_shape}; dimensions are sizes "
            "(>= 0) or names"
        )
    classes_shape = [d for d in out_shape[1:] if d != 1]
    if len(classes_shape) != 1 or not isinstance(classes_shape[0], int) or classes_shape[0] < 2:
        raise OnnxImportError(
            f"{path}: output {model.graph.output[0].name!r} has shape {out_shape}; deepr imports classifiers whose "
            "output is (batch, classes) (or (batch, classes, 1, 1))"
        )
    count = classes_shape[0]
    if before is not None and labels is before.classes and len(labels) != count:
        labels = None  # the graph now has another number of classes: its old labels do not fit
    labels = tuple(labels) if labels else tuple(str(i) for i in range(count))
    if len(labels) != count:
        raise OnnxImportError(f"{len(labels)} labels for an output of {count} classes; give one label per line")
    example = tuple(None if not isinstance(d, int) else d for d in (in_shape[1:] if batched else in_shape))
    record = ImportedOnnx(
        name=name,
        source=str(Path(path).resolve()),
        input_name=inputs[0].name,
        output_name=model.graph.output[0].name,
        input_shape=example,
        batched=batched,
        classes=labels,
        preprocessing=preprocessing.to_json() if preprocessing else "",
        opset=checked.opset,
        upgraded_from=checked.upgraded_from,
        outputs=outputs or _output_kind(model),
    )
    folder = (home or onnx_home()) / name
    keep(_spec(record, folder), folder, record, lambda into: onnx.save(model, str(into / _GRAPH)))  # one file
    return record


def _output_kind(model: onnx.ModelProto) -> str:
    """ "probabilities" where the graph's output is written by Softmax or Sigmoid (through a
    reshape or identity), "logits" otherwise."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(model.graph.output[0].name)
    while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
        node = producer.get(node.input[0])
    return "probabilities" if node is not None and node.op_type in _PROBABILITY_OPERATORS else "logits"


def _kept_before(name: str, home: Path | None) -> ImportedOnnx | None:
    """The record of an earlier import under `name`, if one is kept."""
    folder = (home or onnx_home()) / name
    try:
        return ImportedOnnx.read(folder) if folder.is_dir() else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def imported_onnx(name: str) -> tuple[ImportedOnnx, Path] | None:
    """The record and graph file of `name` if it is an imported ONNX model."""
    from .._registry import get_model_spec

    spec = get_model_spec(name)
    if not spec.onnx_file:
        return None
    return ImportedOnnx.read(Path(spec.onnx_file).parent), Path(spec.onnx_file)


def forget_onnx_import(name: str, home: Path | None = None) -> None:
    forget(name, (home or onnx_home()) / name)


def register_imported_onnx(home: Path | None = None) -> None:
    """Register every ONNX model imported before; one that cannot be read is skipped with a warning."""
    register_folders(home or onnx_home(), lambda folder: _spec(ImportedOnnx.read(folder), folder), "ONNX")
