"""Imported Keras models kept by name, so the zoo's commands take them like its own.

`import_keras("m.h5", "m")` checks the file converts, copies it to
`$DEEPR_HOME/keras/m/` (default ~/.cache/deepr/keras) with `import.json` (labels,
preprocessing, input layout) and registers `m`; `import zoo` registers every model
imported before, so `deepr summary m` and `deepr export m --gradcam` find it.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from serving.protocol.preprocessing import ImagePreprocessing

from .._imports import forget, imports_home, keep, name_problem, read_record, register_folders
from .._registry import ModelSpec
from .._summary import summary
from .errors import KerasImportError
from .files import MAX_UNPACKED_BYTES
from .model import INPUT_LAYOUTS, example_input, from_keras

__all__ = ["ImportedModel", "forget_import", "import_keras", "keras_home", "register_imported_models"]


def keras_home() -> Path:
    """Where imported models are kept: $DEEPR_HOME/keras (default ~/.cache/deepr/keras)."""
    return imports_home("keras")


@dataclass(frozen=True)
class ImportedModel:
    """What `import.json` records about one imported model."""

    name: str
    file: str
    """The copied Keras file, relative to the model's folder."""
    source: str
    """Where it was imported from."""
    input_layout: str
    input_shape: tuple[int | None, ...]
    input_dtype: str
    task: str
    classes: tuple[str, ...]
    scale: float
    keras_params: int
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES
    """The bound its file was read under (raised at import for a very large model)."""
    framing: str | None = None
    """"mnist": a digit model trained on MNIST, whose pictures are inverted when drawn dark on
    light and framed as MNIST's digits (ImagePreprocessing.background and framing)."""

    @classmethod
    def read(cls, folder: Path) -> "ImportedModel":
        return cls(**read_record(folder))


def _output_size(model: nn.Module) -> tuple[int, str]:
    """The output's size and the task it implies: one sigmoid unit is a binary classifier."""
    with torch.no_grad():
        out = model(example_input(model))
    if out.dim() != 2:
        raise KerasImportError(
            f"the model's output has shape {tuple(out.shape)}; deepr serves (batch, classes) outputs"
        )
    last = list(model.children())[-1]
    binary = out.shape[1] == 1 and getattr(last, "activation", None) == "sigmoid"
    return int(out.shape[1]), "binary" if binary else "multiclass"


def _classes(labels: Sequence[str] | None, size: int, task: str) -> tuple[str, ...]:
    if not labels:
        return ("0", "1") if task == "binary" else tuple(str(i) for i in range(size))
    labels = tuple(labels)
    if task == "binary" and len(labels) in (1, 2):
        return labels if len(labels) == 2 else (f"not {labels[0]}", labels[0])
    if len(labels) != size:
        raise KerasImportError(f"{len(labels)} labels for an output of {size} classes; give one label per line")
    return labels


def _build(record: ImportedModel, folder: Path, **options: Any) -> nn.Module:
    if options:
        raise TypeError(f"{record.name} is an imported Keras model; it takes no options ({', '.join(options)})")
    model = from_keras(
        folder / record.file, input_layout=record.input_layout, max_unpacked_bytes=record.max_unpacked_bytes
    )
    shape = record.input_shape
    if len(shape) == 3:  # pictures: resized, scaled, in the layout the model takes
        channels_last = record.input_layout == "nhwc"
        height, width = shape[:2] if channels_last else shape[1:]
        channels = shape[-1] if channels_last else shape[0]
        model.preprocessing = ImagePreprocessing(  # type: ignore[assignment]
            size=(int(height or 0), int(width or 0)),
            color_mode="L" if channels == 1 else "RGB",
            scale=record.scale,
            layout=record.input_layout.upper(),
            background="dark" if record.framing == "mnist" else None,
            framing=record.framing,
        )
    return model


def _spec(record: ImportedModel, folder: Path) -> ModelSpec:
    recurrent = record.input_dtype == "int64" and record.input_shape == (None,)
    export: dict[str, Any] = {"output_names": ("probability",) if record.task == "binary" else ("probabilities",)}
    if record.input_dtype == "int64":
        export["input_names"] = ("tokens",)
    if recurrent:  # the TorchScript exporter keeps the sequence length free (see zoo/models/sequence.py)
        export.update(dynamic_axes=((0, 1),), dynamo=False)
    return ModelSpec(
        name=record.name,
        builder=functools.partial(_build, record, folder),
        section=f"imported from Keras ({Path(record.source).name})",
        input_shape=record.input_shape,
        dataset="",
        task=record.task,
        input_dtype=record.input_dtype,
        export=export,
        description=f"imported from {record.source}",
        classes=record.classes,
        weights_included=True,
    )


def import_keras(
    path: str | Path,
    name: str,
    *,
    labels: Sequence[str] | None = None,
    scale: float = 1 / 255,
    input_layout: str = "nhwc",
    home: Path | None = None,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    framing: str | None = None,
) -> ImportedModel:
    """Convert the Keras model at `path` (checking every layer), keep it as `name` and
    register it in the zoo. `labels`: one per output class (binary: the positive class,
    or negative and positive); `scale`: what pictures' 0-255 pixels are multiplied by;
    `framing` "mnist": a model of MNIST's digits (grey pictures), whose clients invert
    pictures drawn dark on light and frame them as MNIST's digits."""
    if problem := name_problem(name):
        raise KerasImportError(problem)
    if input_layout not in INPUT_LAYOUTS:
        raise KerasImportError(f"input layout {input_layout!r}: expected one of {', '.join(INPUT_LAYOUTS)}")
    model = from_keras(path, input_layout=input_layout, max_unpacked_bytes=max_unpacked_bytes)
    size, task = _output_size(model)
    input_shape: tuple[int | None, ...] = tuple(getattr(model, "input_shape"))
    if framing not in (None, "mnist"):
        raise KerasImportError(f"--framing {framing!r}: expected mnist or none")
    grey_pictures = len(input_shape) == 3 and 1 in (input_shape[0], input_shape[-1])
    if framing == "mnist" and not grey_pictures:
        raise KerasImportError(f"--framing mnist is for models of grey pictures; this one takes {input_shape}")
    input_dtype = str(getattr(model, "input_dtype"))
    counts = summary(model, input_shape, dtype=torch.int64 if input_dtype == "int64" else torch.float32)
    home = home or keras_home()
    folder = home / name
    source = Path(path)
    record = ImportedModel(
        name=name,
        file="model" + (".keras" if source.suffix == ".keras" else ".h5"),
        source=str(source.resolve()),
        input_layout=input_layout,
        input_shape=input_shape,
        input_dtype=input_dtype,
        task=task,
        classes=_classes(labels, size, task),
        scale=scale,
        keras_params=counts.keras_total_params,
        max_unpacked_bytes=max_unpacked_bytes,
        framing=framing,
    )
    keep(_spec(record, folder), folder, record, lambda into: shutil.copyfile(source, into / record.file))
    return record


def forget_import(name: str, home: Path | None = None) -> None:
    """Undo `import_keras(.., name)`: its folder removed, its registration dropped."""
    forget(name, (home or keras_home()) / name)


def register_imported_models(home: Path | None = None) -> None:
    """Register every model imported before; one that cannot be read is skipped with a warning."""
    register_folders(home or keras_home(), lambda folder: _spec(ImportedModel.read(folder), folder), "Keras")
