"""The summary of an imported ONNX graph: one row per operator, its output's shape and the
parameters it brings (initializers and constants, each counted once, at its first use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .._summary import LayerRow, Summary
from .files import tensor_shapes

__all__ = ["onnx_summary"]


def onnx_summary(path: str | Path, name: str) -> Summary:
    model = onnx.load(str(path))
    shapes = tensor_shapes(model)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    counted: set[str] = set()
    rows = []
    for index, node in enumerate(model.graph.node):
        params = 0
        for source in node.input:
            if source in sizes and source not in counted:
                params += sizes[source]
                counted.add(source)
        if node.op_type == "Constant":
            params += sum(int(numpy_helper.to_array(a.t).size) for a in node.attribute if a.name == "value")
        output = node.output[0] if node.output else ""
        shape = tuple(d if isinstance(d, int) else None for d in shapes.get(output, []))
        rows.append(LayerRow(node.name or output or f"node_{index}", node.op_type, shape, params, params, params))
    total = sum(r.params for r in rows)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    operators = sorted({n.op_type for n in model.graph.node})
    notes = (
        f"an ONNX graph, opset {opset}: {len(rows)} operators of {len(operators)} kinds ({', '.join(operators)}); "
        f"each row is an operator and the shape of its first output",
    )
    return Summary(name, tuple(rows), total, total, notes)
