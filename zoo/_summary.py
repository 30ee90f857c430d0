"""Keras-style model summaries: one row per layer, output shape, parameter counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerRow", "Summary", "model_summary", "summary"]

_WIDTH = 80
_LONGEST_NAME = 60
"""The widest the first column grows to; longer names are cut, with an ellipsis."""


@dataclass(frozen=True)
class LayerRow:
    name: str
    layer_type: str
    output_shape: tuple[int | None, ...]
    params: int
    trainable: int
    keras_params: int
    """The same layer's count in Keras (differs for SimpleRNN, LSTM, BatchNormalization)."""


@dataclass(frozen=True)
class Summary:
    """The rows and totals `summary` found; `str()` gives the Keras table."""

    model_name: str
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    notes: tuple[str, ...] = ()
    """Where a layer's count differs from Keras' for the same layer, and why."""

    @property
    def keras_total_params(self) -> int:
        """What Keras' summary() would print as Total params for the same layers."""
        return self.total_params + sum(r.keras_params - r.params for r in self.rows)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        # Keras' widths, the first column widened (to 60) where the names need it: a long name
        # pushed the shape and count off their columns
        names = [f"{row.name} ({row.layer_type})" for row in self.rows]
        first = min(_LONGEST_NAME, max([32, *(len(n) + 2 for n in names)]))
        cols = (first, 30, 18)
        width = _WIDTH + first - 32

        def line(*cells: str) -> str:
            return "".join(c.ljust(w) for c, w in zip(cells, cols)).rstrip()

        def fitted(name: str) -> str:
            return name if len(name) < first else name[: first - 3] + "… "

        out = [
            f'Model: "{self.model_name}"',
            "_" * width,
            line("Layer (type)", "Output Shape", "Param #"),
            "=" * width,
        ]
        for i, (row, name) in enumerate(zip(self.rows, names)):
            shape = "(" + ", ".join("None" if d is None else str(d) for d in row.output_shape) + ")"
            out.append(line(fitted(name), shape, f"{row.params:,}"))
            out.append("=" * width if i == len(self.rows) - 1 else "_" * width)
        out += [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            "_" * width,
        ]
        out += [f"Note: {note}" for note in self.notes]
        return "\n".join(out)


def _is_layer(module: nn.Module) -> bool:
    # A "layer" is what Keras would list: a module with a Keras type, or a leaf.
    return hasattr(module, "keras_type") or not any(True for _ in module.children())


_WHY = {
    "SimpleRNN": "PyTorch's recurrent layers keep an input and a recurrent bias vector where Keras keeps one",
    "LSTM": "PyTorch's recurrent layers keep an input and a recurrent bias vector where Keras keeps one",
    "BatchNormalization": "Keras counts the moving mean and variance as non-trainable parameters; PyTorch keeps them as buffers",
}


def _shapes(
    model: nn.Module, layers: list[tuple[str, nn.Module]], shape: tuple[int, ...], dtype: torch.dtype
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of each layer, in the order the layers ran, for one example of `shape`.
    An imported Keras model computes on NCHW pictures but shows them as Keras does, (H, W, C)."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    channels_last = hasattr(model, "keras_file")

    def record(name: str, out: torch.Tensor | tuple) -> None:
        size = tuple((out[0] if isinstance(out, tuple) else out).shape[1:])
        shapes.append((name, (*size[1:], size[0]) if channels_last and len(size) == 3 else size))

    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: record(name, out)) for name, module in layers
    ]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return shapes


def summary(
    model: nn.Module,
    input_shape: tuple[int | None, ...],
    *,
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Summary:
    """Summarise `model` for one example of `input_shape` (no batch axis).

    Output shapes come from running the model on zeros, with the batch axis
    shown as None, as Keras does. A None in `input_shape` (a sequence length)
    is tried at two sizes; output dimensions that follow it print as None.
    """
    layers: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if _is_layer(child):
                layers.append((full, child))
            else:
                visit(child, full)

    visit(model, "")
    modules = dict(layers)
    was_training = model.training
    model.eval()
    try:
        first = _shapes(model, layers, tuple(7 if d is None else d for d in input_shape), dtype)
        second = (
            _shapes(model, layers, tuple(11 if d is None else d for d in input_shape), dtype)
            if None in input_shape
            else first
        )
    finally:
        model.train(was_training)
    rows, notes = [], []
    for (layer_name, a), (_, b) in zip(first, second):
        module = modules[layer_name]
        params = list(module.parameters())
        count = sum(p.numel() for p in params)
        layer_type = getattr(module, "keras_type", type(module).__name__)
        keras = getattr(module, "keras_params", lambda: count)()
        rows.append(
            LayerRow(
                name=layer_name,
                layer_type=layer_type,
                output_shape=(None, *(x if x == y else None for x, y in zip(a, b))),
                params=count,
                trainable=sum(p.numel() for p in params if p.requires_grad),
                keras_params=keras,
            )
        )
        if keras != count:
            notes.append(
                f"{layer_name} has {count:,} parameters here, {keras:,} in Keras: {_WHY.get(layer_type, 'see its docstring')}."
            )

    params = list(model.parameters())
    return Summary(
        model_name=name or type(model).__name__,
        rows=tuple(rows),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        notes=tuple(notes),
    )


def model_summary(name: str, model: nn.Module | None = None, **options: object) -> Summary:
    """The summary of registered model `name` (built with `options` unless `model` is given),
    at the model's own input shape when it has one, else its registered one."""
    from ._registry import get_model, get_model_spec

    spec = get_model_spec(name)
    if spec.summarize is not None and model is None:  # an imported graph: no PyTorch module to walk
        if options:
            raise TypeError(f"{name} is an imported graph; it takes no options ({', '.join(options)})")
        return spec.summarize()
    model = model if model is not None else get_model(name, **options)
    dtype = torch.int64 if spec.input_dtype == "int64" else torch.float32
    return summary(model, getattr(model, "input_shape", spec.input_shape), name=name, dtype=dtype)
