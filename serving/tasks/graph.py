"""The one interface every task runs its exported graph through: a local onnxruntime
session or a model on a V2 server, asked the same questions the same way.

    graph = LocalGraph("models/vgg16_features/1/model.onnx")      # or ServedGraph("vgg16_features")
    graph.fact(LAYERS_KEY)                # ["block1_conv1", ...]: ONNX metadata or config parameter
    graph.run({"images": batch}, outputs=["block3_conv1"])

A task object takes a Graph and closes it when it is closed; a ServedGraph closes its
connection only when it opened it (a client passed in stays the caller's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import onnxruntime as ort

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.schema import LEGACY_CONFIG_KEYS, decode_fact
from serving.runtime.providers import open_session
from serving.runtime.sessions import part_session

__all__ = ["Graph", "LocalGraph", "ServedGraph", "GraphTask"]

_MISSING: Any = object()


class Graph(Protocol):
    name: str
    """How messages name the graph: its file, or `model 'NAME'`."""
    inputs: list[str]
    outputs: list[str]

    def fact(self, key: str, default: Any = _MISSING) -> Any:
        """A deepr.* fact the export wrote (schema.py), decoded; KeyError names what is missing."""
        ...

    def has(self, key: str) -> bool: ...

    def item_shape(self, name: str) -> tuple[int, ...]:
        """An input's or output's shape without its batch axis, -1 where it varies (as V2 says)."""
        ...

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The requested outputs (default: all); only what they need is computed."""
        ...

    def close(self) -> None: ...


class _Closing:
    """`with` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalGraph(_Closing):
    """An exported graph in this process (CUDA when usable, else CPU). Runs that ask for
    some outputs use a pruned session of just their part, cached per output set."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto", what: str = "graph") -> None:
        self.onnx_file = Path(onnx_file)
        self.name = str(onnx_file)
        self.device = device
        self.session = open_session(onnx_file, device, what=what)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._shapes = {
            t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape[1:])  # symbolic axes as V2's -1
            for t in (*self.session.get_inputs(), *self.session.get_outputs())
        }
        self._parts: dict[frozenset[str], ort.InferenceSession] = {}

    def has(self, key: str) -> bool:
        return key in self._metadata

    def fact(self, key: str, default: Any = _MISSING) -> Any:
        if key in self._metadata:
            return decode_fact(key, self._metadata[key])
        if default is _MISSING:
            raise KeyError(f"{self.name} carries no {key} metadata")
        return default

    def item_shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else self.outputs
        return dict(zip(names, self._session_for(names).run(names, dict(inputs))))

    def _session_for(self, names: list[str]) -> ort.InferenceSession:
        key = frozenset(names)
        if key == frozenset(self.outputs):
            return self.session
        if key not in self._parts:
            self._parts[key] = part_session(self.onnx_file, names, self.device)
        return self._parts[key]

    def close(self) -> None:
        self._parts.clear()


class ServedGraph(_Closing):
    """A model on a V2 server. Batches larger than the model's max_batch_size are sent in
    parts; `stream=True` sends every run over one ModelStreamInfer stream (in order, one at
    a time: for callers that need each answer before the next question)."""

    def __init__(
        self, model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None, stream: bool = False
    ) -> None:
        self.model = model
        self.name = f"model {model!r}"
        self._own_client = client is None
        self.client = client or InferenceClient(url)
        try:
            self.config = self.client.model_config(model)
            self._stream = self.client.stream() if stream else None
        except BaseException:
            self.close()
            raise
        self.inputs = [i.name for i in self.config.input]
        self.outputs = [o.name for o in self.config.output]
        self._shapes = {t.name: tuple(t.dims) for t in (*self.config.input, *self.config.output)}

    def has(self, key: str) -> bool:
        legacy = LEGACY_CONFIG_KEYS.get(key)
        return key in self.config.parameters or (legacy is not None and legacy[0] in self.config.parameters)

    def fact(self, key: str, default: Any = _MISSING) -> Any:
        parameters = self.config.parameters
        if key in parameters:
            return decode_fact(key, parameters[key].string_value)
        legacy = LEGACY_CONFIG_KEYS.get(key)  # repositories exported before the keys were one
        if legacy is not None and legacy[0] in parameters:
            return legacy[1](parameters[legacy[0]].string_value)
        if default is _MISSING:
            raise KeyError(f"{self.name} has no {key} parameter in its config")
        return default

    def item_shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else None
        infer = self._stream.infer if self._stream is not None else self.client.infer
        rows = len(next(iter(inputs.values())))
        chunk = self.config.max_batch_size
        if not chunk or rows <= chunk:
            return infer(self.model, inputs, outputs=names)
        parts = [
            infer(self.model, {k: v[i : i + chunk] for k, v in inputs.items()}, outputs=names)
            for i in range(0, rows, chunk)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        """End the stream (the server stops at once: it only runs when asked) and the
        connection if this object opened it."""
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is not None:
            stream.close()
        if self._own_client:
            self.client.close()


class GraphTask(_Closing):
    """Base of the task objects: holds a Graph, checks it is the kind of graph the task
    runs, and closes it (with `with`, or close())."""

    kind = "graph"
    """What the task runs, for messages (e.g. "Grad-CAM graph")."""
    export_hint = ""
    """The command that exports such a graph."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def refuse(self) -> ValueError:
        """The error for a graph that is not of this task's kind."""
        self.graph.close()
        return ValueError(f"{self.graph.name} is not a {self.kind}: export one with `{self.export_hint}`")

    def close(self) -> None:
        self.graph.close()
