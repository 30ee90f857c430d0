"""Keras-style model summaries: one row per layer, output shape, parameter counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerRow", "Summary", "summary"]

_WIDTH = 80


@dataclass(frozen=True)
class LayerRow:
    name: str
    layer_type: str
    output_shape: tuple[int | None, ...]
    params: int
    trainable: int


@dataclass(frozen=True)
class Summary:
    """The rows and totals `summary` found; `str()` gives the Keras table."""

    model_name: str
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        cols = (32, 30, 18)

        def line(*cells: str) -> str:
            return "".join(c.ljust(w) for c, w in zip(cells, cols)).rstrip()

        out = [f'Model: "{self.model_name}"', "_" * _WIDTH, line("Layer (type)", "Output Shape", "Param #"), "=" * _WIDTH]
        for i, row in enumerate(self.rows):
            shape = "(" + ", ".join("None" if d is None else str(d) for d in row.output_shape) + ")"
            out.append(line(f"{row.name} ({row.layer_type})", shape, f"{row.params:,}"))
            out.append("=" * _WIDTH if i == len(self.rows) - 1 else "_" * _WIDTH)
        out += [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            "_" * _WIDTH,
        ]
        return "\n".join(out)


def _is_layer(module: nn.Module) -> bool:
    # A "layer" is what Keras would list: a module with a Keras type, or a leaf.
    return hasattr(module, "keras_type") or not any(True for _ in module.children())


def summary(model: nn.Module, input_shape: tuple[int, ...], *, name: str | None = None, dtype: torch.dtype = torch.float32) -> Summary:
    """Summarise `model` for one example of `input_shape` (no batch axis).

    Output shapes come from running the model once on zeros, with the batch
    axis shown as None, as Keras does.
    """
    rows: list[LayerRow] = []
    handles = []

    def record(layer_name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            params = list(module.parameters())
            rows.append(
                LayerRow(
                    name=layer_name,
                    layer_type=getattr(module, "keras_type", type(module).__name__),
                    output_shape=(None, *tuple(tensor.shape[1:])),
                    params=sum(p.numel() for p in params),
                    trainable=sum(p.numel() for p in params if p.requires_grad),
                )
            )

        return hook

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if _is_layer(child):
                handles.append(child.register_forward_hook(record(full)))
            else:
                visit(child, full)

    visit(model, "")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = list(model.parameters())
    return Summary(
        model_name=name or type(model).__name__,
        rows=tuple(rows),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
    )
