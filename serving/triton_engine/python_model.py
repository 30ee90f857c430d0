"""The python-backend model behind every model `deepr serve --engine triton` translates.

Triton's front has already parsed each request, checked it against the config, queued it
and merged it with others; `execute` gets the merged requests and runs deepr's OnnxModel on
them once (one onnxruntime run for every request whose inputs share their dims), then
splits the outputs back. What runs here is exactly what deepr's own server runs per batch:
config completion, warm-up, picture decoding for encoded-picture models, text inputs and the
output checks that keep one client's rows out of another's answer.

This module runs in the stub's interpreter, under the numpy 1.x the stub is built against
(distribution.py), with deepr and onnxruntime from deepr's own environment.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from google.protobuf import json_format

from serving.protocol.codecs import as_text
from serving.protocol.errors import InvalidInput, ServingError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.preprocessing import PictureError
from serving.server.autocomplete import CompletionPolicy
from serving.server.model import OnnxModel, RuntimeOptions
from serving.triton_engine import PLAN_FILE
from serving.triton_engine.repository import complete_from_graph

__all__ = ["TritonPythonModel"]

logger = logging.getLogger("deepr.triton_engine")

_ROWS_PER_REQUEST_FOR_THREADS = 8
"""Runs averaging fewer rows per request than this go to the single-threaded twin session."""
_LEAN_TWIN_MAX_BYTES = 64 * 2**20
"""Graphs larger than this keep one session (a twin would hold the weights twice)."""


def _triton_error(exc: BaseException) -> Any:
    """A TritonError with the gRPC status deepr's error maps to."""
    codes = {
        "INVALID_ARGUMENT": "INVALID_ARG",
        "NOT_FOUND": "NOT_FOUND",
        "UNAVAILABLE": "UNAVAILABLE",
        "RESOURCE_EXHAUSTED": "UNAVAILABLE",
        "FAILED_PRECONDITION": "INTERNAL",
    }
    status = exc.code.name if isinstance(exc, ServingError) else "INTERNAL"
    code = getattr(pb_utils.TritonError, codes.get(status, "INTERNAL"), None)
    message = str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _plan(folder: Path) -> dict:
    """The plan repository.py wrote in the model's folder (`folder`, or the version folder in it)."""
    path = folder / PLAN_FILE if (folder / PLAN_FILE).is_file() else folder.parent / PLAN_FILE
    return json.loads(path.read_text())


def _entry_dict(entry: mc.ModelInput | mc.ModelOutput) -> dict:
    return {"name": entry.name, "data_type": mc.DataType.Name(entry.data_type), "dims": list(entry.dims)}


def _config_from(triton_json: dict) -> mc.ModelConfig:
    """Triton's config (JSON, as the python backend hands it) as deepr's ModelConfig."""
    config = json_format.ParseDict(triton_json, mc.ModelConfig(), ignore_unknown_fields=True)
    if "graph" not in triton_json.get("optimization", {}):
        # Triton fills in an optimization block of its own (pinned memory, priority); its
        # graph level would read as 0 (basic), and onnxruntime's default is all
        config.ClearField("optimization")
    return config


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        """A config given without inputs or outputs (a load request's override: Triton's
        python backend cannot read graphs) completed from the graph, as deepr completes it."""
        given = auto_complete_model_config.as_dict()
        if given.get("input") and given.get("output"):
            return auto_complete_model_config
        plan = _plan(Path(pb_utils.get_model_dir()))
        config = _config_from(given)
        completed = mc.ModelConfig()
        completed.CopyFrom(config)
        graph = Path(plan["files"][max(plan["files"], key=int)])
        complete_from_graph(completed, graph, CompletionPolicy(**plan["completion"]))
        if completed.max_batch_size != config.max_batch_size:
            auto_complete_model_config.set_max_batch_size(completed.max_batch_size)
        if completed.HasField("dynamic_batching") and not config.HasField("dynamic_batching"):
            auto_complete_model_config.set_dynamic_batching()
        # complete_config fills only what is missing: entries the override gave stay as given
        for entry in completed.input[len(config.input) :]:
            auto_complete_model_config.add_input(_entry_dict(entry))
        for entry in completed.output[len(config.output) :]:
            auto_complete_model_config.add_output(_entry_dict(entry))
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        plan = _plan(Path(args["model_repository"]))
        name, version = args["model_name"], args["model_version"]
        # Triton's config, not the file's: a load request may have replaced it
        config = _config_from(json.loads(args["model_config"]))
        # Triton runs one of these per instance, each in its own process: one session each
        del config.instance_group[:]
        self.model = OnnxModel(
            name,
            version,
            Path(plan["files"][version]),
            config,
            RuntimeOptions(**plan["runtime"]),
            CompletionPolicy(**plan["completion"]),
        )
        self.model.load()
        self.batched = self.model.max_batch_size > 0
        self.input_names = [s.name for s in self.model.inputs]
        self.output_names = [s.name for s in self.model.outputs]
        self.max_pixels = int(plan["max_picture_pixels"])
        self.plain_inputs = not self.model.text_inputs and self.model.encoded_input is None
        self.lean = self._lean_session()

    def _lean_session(self) -> ort.InferenceSession | None:
        """A single-threaded twin of the model's session, for runs merged from small requests.

        Triton's front works per request and onnxruntime per row. A run of many one-row
        requests comes while the front keeps the cores busy parsing and answering them, and
        splitting it over threads only adds their coordination (on 2 cores, about 9% more CPU per
        request at batch 1); a run of few large requests leaves the cores to onnxruntime,
        where threads pay (1.35x the items/s at batch 32). The twin costs the weights twice,
        so large graphs go without."""
        threads = self.model.runtime.intra_op_threads
        if threads == 1 or self.model.path.stat().st_size > _LEAN_TWIN_MAX_BYTES:
            return None
        return self.model.new_session(threads=1)

    def execute(self, requests: list) -> list:
        responses: list[Any] = [None] * len(requests)
        decoded: list[tuple[int, dict[str, np.ndarray], list[str]]] = []
        for i, request in enumerate(requests):
            try:
                decoded.append((i, self._inputs(request), self._wanted(request)))
            except Exception as exc:  # this request's own fault: the others still run
                responses[i] = pb_utils.InferenceResponse(error=_triton_error(exc))
        for group in self._groups(decoded):
            self._run(group, responses)
        return responses

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        if self.plain_inputs:  # the common case, kept short: this runs once per request
            get = pb_utils.get_input_tensor_by_name
            return {n: t.as_numpy() for n in self.input_names if (t := get(request, n)) is not None}
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:  # an optional input the request left out
                continue
            inputs[name] = tensor.as_numpy()
        for name in self.model.text_inputs:
            if name in inputs:
                inputs[name] = as_text(inputs[name], name)
        if self.model.encoded_input is not None:
            name, preprocessing = self.model.encoded_input
            files = inputs.pop(name).reshape(-1)
            pixels = []
            for item, data in enumerate(files):
                try:
                    pixels.append(preprocessing.decoded(bytes(data), self.max_pixels))
                except PictureError as exc:
                    raise InvalidInput(f"input {name!r} item {item}: {exc}") from None
            graph_input = self.model.graph_inputs[0].name
            inputs = {graph_input: np.stack(pixels), **inputs}
        return inputs

    def _wanted(self, request: Any) -> list[str]:
        names = request.requested_output_names()
        return [n for n in self.output_names if n in names] if names else self.output_names

    def _groups(self, decoded: list) -> list[list]:
        """Requests that one run can serve: a batched model's requests whose inputs agree past
        the batch axis, each request alone otherwise."""
        if not self.batched:
            return [[each] for each in decoded]
        groups: dict[tuple, list] = {}
        for each in decoded:
            # Triton has checked each input's datatype against the config: dims are what differ
            key = tuple((n, a.shape[1:]) for n, a in each[1].items())
            groups.setdefault(key, []).append(each)
        return list(groups.values())

    def _run(self, group: list, responses: list) -> None:
        if all(names is self.output_names for _, _, names in group):
            wanted = self.output_names
        else:
            wanted = sorted({n for _, _, names in group for n in names}, key=self.output_names.index)
        try:
            if len(group) == 1:
                inputs = group[0][1]
            else:
                inputs = {n: np.concatenate([g[1][n] for g in group]) for n in group[0][1]}
            rows = next(iter(inputs.values())).shape[0] if self.batched and inputs else 1
            lean = self.lean if rows < _ROWS_PER_REQUEST_FOR_THREADS * len(group) else None
            outputs = self.model.predict(inputs, wanted, lean)
        except Exception as exc:  # onnxruntime or the output checks: every request of the run fails
            logger.warning("%s: a run of %d request(s) failed: %s", self.model.name, len(group), exc)
            for i, _, _ in group:
                responses[i] = pb_utils.InferenceResponse(error=_triton_error(exc))
            return
        start = 0
        for i, inputs, names in group:
            rows = next(iter(inputs.values())).shape[0] if self.batched and inputs else 0
            tensors = [
                pb_utils.Tensor(n, outputs[n][start : start + rows] if self.batched else outputs[n]) for n in names
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += rows

    def finalize(self) -> None:
        self.model.unload()
