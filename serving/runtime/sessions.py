"""onnxruntime sessions beyond one per graph: sessions computing only part of a graph, and
how many cores this process may give them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import onnx
import onnx.utils
import onnxruntime as ort

from serving.runtime.providers import select_providers

__all__ = ["pruned_graph", "part_session", "usable_cores"]

_CONTROL_FLOW = ("Loop", "If", "Scan")
"""Operators whose subgraphs onnx's extractor cannot follow."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pruned_graph(onnx_file: str | Path, outputs: Iterable[str]) -> bytes | None:
    """The serialized part of a graph that `outputs` need (onnx's own extractor), or None
    for graphs with control flow, whose subgraphs the extractor cannot follow."""
    graph = onnx.load(str(onnx_file))
    if any(node.op_type in _CONTROL_FLOW for node in graph.graph.node):
        return None
    inputs = [i.name for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}]
    part = onnx.utils.Extractor(graph).extract_model(inputs, sorted(outputs))
    part.metadata_props.extend(graph.metadata_props)
    return part.SerializeToString()


def part_session(onnx_file: str | Path, outputs: Iterable[str], device: str = "auto") -> ort.InferenceSession:
    """An in-process session computing only `outputs` (the whole graph where it cannot be cut)."""
    return ort.InferenceSession(
        pruned_graph(onnx_file, outputs) or str(onnx_file), providers=list(select_providers(device))
    )
