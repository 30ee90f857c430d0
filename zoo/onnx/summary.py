"""The summary of an imported ONNX graph: one row per operator, its output's shape and the
parameters it brings (initializers and constants, each counted once, at its first use)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .._summary import LayerRow, Summary
from .files import tensor_shapes
from .tensors import NoPictureTensor, default_gradcam_tensor, picture_tensors

_NOTE_WIDTH = 96

__all__ = ["onnx_summary"]


def onnx_summary(path: str | Path, name: str) -> Summary:
    """One row per operator, named by the tensor it writes (what `--layer` and `--features`
    take); the Identity operators that only pass weights along are left out of the rows, their
    parameters counted. The notes list the 4-D tensors Grad-CAM and feature graphs may name."""
    model = onnx.load(str(path))
    shapes = tensor_shapes(model)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    counted: set[str] = set()
    rows = []
    hidden = hidden_params = 0
    for index, node in enumerate(model.graph.node):
        params = 0
        for source in node.input:
            if source in sizes and source not in counted:
                params += sizes[source]
                counted.add(source)
        if node.op_type == "Constant":
            params += sum(int(numpy_helper.to_array(a.t).size) for a in node.attribute if a.name == "value")
        if node.op_type == "Identity" and node.input and node.input[0] in sizes:
            hidden, hidden_params = hidden + 1, hidden_params + params  # a weight passed along
            continue
        output = node.output[0] if node.output else ""
        shape = tuple(d if isinstance(d, int) else None for d in shapes.get(output, []))
        rows.append(LayerRow(output or node.name or f"node_{index}", node.op_type, shape, params, params, params))
    total = sum(r.params for r in rows) + hidden_params
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    operators = sorted({n.op_type for n in model.graph.node})
    notes = [
        f"an ONNX graph, opset {opset}: {len(model.graph.node)} operators of {len(operators)} kinds "
        f"({', '.join(operators)}); each row is an operator, named by the tensor it writes, and that tensor's shape"
        + (
            f"; {hidden} Identity operators that pass weights along are not shown (their parameters are counted)"
            if hidden
            else ""
        )
    ]
    tensors = picture_tensors(model)
    if tensors:
        try:
            default = f" (Grad-CAM's default: {default_gradcam_tensor(model)})"
        except NoPictureTensor:
            default = ""
        notes.append(
            f"the 4-D tensors `deepr export {name} --gradcam --layer T` and `--features --layers T,U` take{default}:\n"
            + textwrap.fill(", ".join(tensors), width=_NOTE_WIDTH, initial_indent="  ", subsequent_indent="  ")
        )
    return Summary(name, tuple(rows), total, total, tuple(notes))
