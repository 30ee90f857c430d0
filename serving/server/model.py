"""OnnxModel: one version of one model, owning its onnxruntime session."""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from serving.protocol.codecs import TensorSpec
from serving.protocol.datatypes import CONFIG_TO_V2, ONNX_TO_V2, V2_TO_NUMPY
from serving.protocol.errors import InvalidInput, ModelLoadError, ModelNotReady, ModelOutputError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.preprocessing import ImagePreprocessing
from serving.protocol.schema import COMPLETED_KEY, PREPROCESSING_KEY
from serving.runtime.providers import select_providers
from serving.runtime.sessions import pruned_graph, usable_cores
from serving.server.autocomplete import CompletionPolicy, complete_config
from serving.server.batch_profile import PROFILE_SECONDS_AT_LOAD, profile_at_load, profile_batches
from serving.server.batch_sizes import warm_run_sizes
from serving.server.warmup import warm_up

__all__ = ["OnnxModel", "RuntimeOptions", "checked_batch", "instance_count", "request_rows", "rows_of"]

logger = logging.getLogger(__name__)

_PRUNED_SESSIONS = 8
"""Sessions kept per model for requests that ask for a subset of its outputs."""

_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def rows_of(inputs: Mapping[str, np.ndarray]) -> int:
    """The rows of a batched request: its first input's first dimension (check_batch makes
    every input agree)."""
    return next(iter(inputs.values())).shape[0]


def request_rows(model: "OnnxModel", inputs: Mapping[str, np.ndarray]) -> int:
    """The rows a request carries: its batch for a batched model, else one."""
    return rows_of(inputs) if model.max_batch_size > 0 and inputs else 1


def checked_batch(model: str, max_batch_size: int, inputs: Mapping[str, np.ndarray]) -> int:
    """A request's batch size, after checking its inputs agree on it and it fits (1 for a
    model without a batch dimension)."""
    if max_batch_size <= 0:
        return 1
    sizes = {a.shape[0] for a in inputs.values()}
    if len(sizes) > 1:
        raise InvalidInput(f"inputs of {model} disagree on the batch size: {sorted(sizes)}")
    batch = sizes.pop() if sizes else 0
    if batch > max_batch_size:
        raise InvalidInput(f"batch of {batch} exceeds {model}'s max_batch_size {max_batch_size}")
    if batch == 0:
        raise InvalidInput(f"empty batch: {model} needs at least one example")
    return batch


def instance_count(config: mc.ModelConfig) -> int:
    """How many runs of the model may go at once: the config's instance_group counts."""
    return sum(g.count or 1 for g in config.instance_group) or 1


def _encoded_preprocessing(config: mc.ModelConfig) -> ImagePreprocessing | None:
    """The preprocessing of a model that takes picture files, or None."""
    if PREPROCESSING_KEY not in config.parameters:
        return None
    try:
        preprocessing = ImagePreprocessing.from_json(config.parameters[PREPROCESSING_KEY].string_value)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{config.name}: its {PREPROCESSING_KEY} parameter cannot be read: {exc}") from None
    return preprocessing if preprocessing.pixels == "encoded" else None


def _check_reshape(model: str, kind: str, name: str, dims: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """A reshape must hold as many elements as the dims (where both are known)."""
    if -1 in dims or -1 in shape:
        if dims.count(-1) > 1 or shape.count(-1) > 1:
            raise ModelLoadError(f"{model}: {kind} {name!r}: a reshape may leave at most one dimension free")
        return
    if math.prod(dims) != math.prod(shape):
        raise ModelLoadError(
            f"{model}: {kind} {name!r}: dims {list(dims)} hold {math.prod(dims)} elements, reshape {list(shape)} "
            f"{math.prod(shape)}"
        )


def _onnx_shape(shape: Sequence[int | str | None]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


@dataclass(frozen=True)
class RuntimeOptions:
    """How onnxruntime runs every model of a server."""

    device: str = "auto"
    """auto (CUDA when usable), cuda or cpu."""
    intra_op_threads: int = 0
    """Threads per run; 0 lets onnxruntime choose (one per physical core)."""
    tf32: bool = False
    """Allow TF32 matmuls and convolutions on CUDA: faster on Ampere and later, about
    three decimal digits of precision."""
    spin: bool = False
    """Let idle onnxruntime threads spin-wait for the next run. Faster back-to-back runs
    when nothing else needs the cores; off, the cores go to the server's own work."""


class OnnxModel:
    """An ONNX file served under a name and version, described by its config.pbtxt."""

    def __init__(
        self,
        name: str,
        version: str,
        path: Path,
        config: mc.ModelConfig,
        runtime: RuntimeOptions = RuntimeOptions(),
        completion: CompletionPolicy = CompletionPolicy(),
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config
        self.runtime = runtime
        self.completion = completion
        self._session: ort.InferenceSession | None = None
        self._idle_instances: queue.SimpleQueue[ort.InferenceSession] | None = None
        """With instance_group count > 1: the sessions not running, one per instance."""
        self._options: ort.SessionOptions | None = None
        self._pruned: collections.OrderedDict[frozenset[str], ort.InferenceSession] = collections.OrderedDict()
        self._pruning = threading.Lock()
        self.inputs: list[TensorSpec] = []
        """What requests carry (a BYTES input of picture files for an encoded-picture model)."""
        self.graph_inputs: list[TensorSpec] = []
        """What the graph takes."""
        self.encoded_input: tuple[str, ImagePreprocessing] | None = None
        """An encoded-picture model's BYTES input, and the preprocessing that decodes it."""
        self.outputs: list[TensorSpec] = []
        self._output_shapes: dict[str, tuple[int, ...]] = {}
        """Each output's dims as clients get them (past the batch axis of a batched model)."""
        self.graph_shapes: dict[str, tuple[int, ...]] = {}
        """Triton's reshape: the shape (past the batch) the graph takes or makes, by tensor name,
        where the config's dims (what clients send and get) differ from it."""
        self.text_inputs: list[str] = []
        """Graph inputs that are ONNX string tensors: requests' BYTES elements, as UTF-8 text."""
        self.metadata: dict[str, str] = {}
        self.run_seconds: dict[int, float] = {}
        """Batch sizes warmed at load for merged runs, with the time of a warm run."""

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def providers(self) -> list[str]:
        """The execution providers of the loaded session, first the one that runs it."""
        return self._session.get_providers() if self._session is not None else []

    @property
    def ready(self) -> bool:
        return self._session is not None

    def session_options(self, threads: int | None = None) -> ort.SessionOptions:
        """onnxruntime options for this model's sessions; `threads` overrides the intra-op threads."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.runtime.intra_op_threads if threads is None else threads
        options.log_severity_level = 3  # errors only: deepr reports its own
        if not self.runtime.spin:
            # Idle onnxruntime threads otherwise spin for a while after each run, taking the
            # cores the event loop needs to decode the next requests.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.config.HasField("optimization"):
            level = self.config.optimization.graph.level
            if level not in _GRAPH_LEVELS:
                raise ModelLoadError(
                    f"{self.name}: optimization.graph.level {level} is not one of {sorted(_GRAPH_LEVELS)}"
                )
            options.graph_optimization_level = _GRAPH_LEVELS[level]
        return options

    def new_session(self, threads: int | None = None) -> ort.InferenceSession:
        """A fresh onnxruntime session of the whole graph (ModelLoadError when it cannot load)."""
        try:
            return ort.InferenceSession(
                str(self.path),
                self.session_options(threads),
                providers=list(select_providers(self.runtime.device, self.runtime.tf32)),
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(
                f"{self.name} version {self.version}: onnxruntime cannot load {self.path}: {exc}"
            ) from None

    def load(self) -> None:
        """Create the session(s) and check the config against the graph (ModelLoadError on any mismatch).

        With instance_group count N > 1 there are N sessions, each with its share of the
        cores as intra-op threads (unless the server fixes the threads), so N runs go at
        once without contending for one thread pool."""
        start = time.perf_counter()
        instances = instance_count(self.config)
        threads = None
        if instances > 1 and not self.runtime.intra_op_threads:
            threads = max(1, usable_cores() // instances)
        self._options = self.session_options(threads)
        session = self.new_session(threads)
        complete_config(self.config, session.get_inputs(), session.get_outputs(), self.completion)
        configured = list(self.config.input)
        encoded = _encoded_preprocessing(self.config)
        if encoded is not None:  # the config's BYTES entry stands for the graph's uint8 pixels
            configured = configured[1:]
        self.graph_inputs = self._specs(session.get_inputs(), configured, "input")
        self.inputs = self.graph_inputs
        if encoded is not None:
            self.inputs, self.encoded_input = self._encoded_specs(encoded), (self.config.input[0].name, encoded)
        self.outputs = self._specs(session.get_outputs(), list(self.config.output), "output")
        self._output_shapes = {s.name: s.shape[1:] if self.max_batch_size > 0 else s.shape for s in self.outputs}
        self.text_inputs = [s.name for s in self.inputs if s.datatype == "BYTES" and s in self.graph_inputs]
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        if instances > 1:
            self._idle_instances = queue.SimpleQueue()
            for each in [session, *(self.new_session(threads) for _ in range(instances - 1))]:
                self._idle_instances.put(each)
        self._session = session
        logger.info(
            "loaded %s version %s in %.2fs on %s%s",
            self.name,
            self.version,
            time.perf_counter() - start,
            session.get_providers()[0],
            f", {instances} instances x {threads} threads" if instances > 1 else "",
        )
        description = f"{self.name} version {self.version}"
        try:
            warm_up(
                list(self.config.model_warmup),
                self.path.parent.parent,
                self.max_batch_size > 0,
                self.predict,
                description,
            )
            if profile_at_load(self.config):
                # The profile has run every size warm already: its rates are the warm timings.
                profile = profile_batches(self, seconds_per_size=PROFILE_SECONDS_AT_LOAD)
                logger.info("%s: batch profile\n%s", description, profile.table())
                profile.write_into(self.config)
                self.run_seconds = {s: s / profile.rows_per_s[s] for s in profile.preferred_sizes}
            else:
                self.run_seconds = warm_run_sizes(self.config, self.zero_inputs, self.predict, description)
            if not self.run_seconds and "dynamic_batching" in self.config.parameters[COMPLETED_KEY].string_value:
                self._probe_rows()  # batching that deepr chose for a bare file: it checks the graph takes it
        except ModelOutputError as exc:
            self.unload()
            raise ModelLoadError(f"{description}: {exc}") from None
        except ModelLoadError:
            self.unload()  # not ready: its warm-up could not run
            raise
        except Exception as exc:  # onnxruntime failing on zero inputs at a size
            self.unload()
            raise ModelLoadError(f"{description}: warming up batch sizes failed: {exc}") from None

    def _probe_rows(self) -> None:
        """Run batches of 1 and 2 rows (free dims as 1) through a model batched by config
        completion that no warm-up ran, so that a graph answering other rows than it was given
        is found at load (ModelOutputError) rather than by the first two clients merged
        together. A graph that cannot run on made-up dims is left to its requests."""
        for rows in (1, 2):
            if rows > self.max_batch_size:
                return
            inputs = {
                s.name: np.full(
                    (rows, *(max(d, 1) for d in s.shape[1:])),
                    b"" if s.datatype == "BYTES" else 0,
                    dtype=object if s.datatype == "BYTES" else V2_TO_NUMPY[s.datatype],
                )
                for s in self.graph_inputs
            }
            try:
                self.predict(inputs)
            except ModelOutputError:
                raise
            except Exception as exc:  # onnxruntime refusing the made-up dims
                logger.debug("%s: the rows probe could not run (%s)", self.name, exc)
                return

    def zero_inputs(self, rows: int) -> dict[str, np.ndarray] | None:
        """Zero inputs of `rows` rows, or None when an input has a free dimension."""
        arrays = {}
        for spec in self.graph_inputs:
            dims = spec.shape[1:]
            if any(d < 0 for d in dims) or spec.datatype == "BYTES":
                return None
            arrays[spec.name] = np.zeros((rows, *dims), V2_TO_NUMPY[spec.datatype])
        return arrays

    def _specs(self, graph_args: list, configured: list, kind: str) -> list[TensorSpec]:
        """Tensor specs from the graph, cross-checked with the config entries when there are any."""
        batched = self.max_batch_size > 0
        specs = []
        for arg in graph_args:
            datatype = ONNX_TO_V2.get(arg.type)
            if datatype is None:
                raise ModelLoadError(f"{self.name}: {kind} {arg.name!r} has type {arg.type}, which deepr cannot serve")
            shape = _onnx_shape(arg.shape)
            if batched:
                if not shape or shape[0] != -1:
                    raise ModelLoadError(
                        f"{self.name}: max_batch_size is {self.max_batch_size}, but {kind} {arg.name!r} "
                        f"has no variable first (batch) axis: {list(shape)}"
                    )
                shape = (-1, *shape[1:])
            specs.append(TensorSpec(arg.name, datatype, shape))
        if configured:
            by_name = {s.name: s for s in specs}
            for entry in configured:
                spec = by_name.get(entry.name)
                if spec is None:
                    raise ModelLoadError(
                        f"{self.name}: config {kind} {entry.name!r} is not in the graph; the graph has {sorted(by_name)}"
                    )
                want_type = CONFIG_TO_V2.get(mc.DataType.Name(entry.data_type))
                dims = tuple(entry.dims)
                graph_dims = spec.shape[1:] if batched else spec.shape
                taken = dims
                if entry.HasField("reshape"):  # Triton's reshape: the graph's shape is reshape.shape
                    taken = tuple(entry.reshape.shape)
                    _check_reshape(self.name, kind, entry.name, dims, taken)
                    self.graph_shapes[entry.name] = taken if kind == "input" else dims
                if (
                    want_type != spec.datatype
                    or len(taken) != len(graph_dims)
                    or any(g not in (-1, c) for c, g in zip(taken, graph_dims))
                ):
                    shown = f"dims {list(dims)}" + (f" reshaped to {list(taken)}" if taken != dims else "")
                    raise ModelLoadError(
                        f"{self.name}: config {kind} {entry.name!r} is {want_type} {shown}, "
                        f"the graph has {spec.datatype} dims {list(graph_dims)}"
                    )
                # The config may pin a dimension the graph leaves free.
                by_name[entry.name] = TensorSpec(spec.name, spec.datatype, ((-1,) if batched else ()) + dims)
            specs = [by_name[s.name] for s in specs]
        return specs

    def _encoded_specs(self, preprocessing: ImagePreprocessing) -> list[TensorSpec]:
        """The request's inputs of an encoded-picture model, after checking its graph takes
        the pixels the preprocessing makes."""
        entry = self.config.input[0]
        pixels = next((s for s in self.graph_inputs if s.name == entry.name), None)
        height, width = preprocessing.size
        expected = (-1, height, width, preprocessing.channels)
        if entry.data_type != mc.TYPE_STRING or list(entry.dims) != [1]:
            raise ModelLoadError(
                f"{self.name}: an encoded-picture input is TYPE_STRING dims [1]; {entry.name!r} is not"
            )
        if pixels is None or pixels.datatype != "UINT8" or self.max_batch_size <= 0 or pixels.shape != expected:
            found = f"{pixels.datatype} {list(pixels.shape)}" if pixels else "nothing of that name"
            raise ModelLoadError(
                f"{self.name}: encoded pictures decode to UINT8 {list(expected)}; the graph's input {entry.name!r} is {found}"
            )
        return [TensorSpec(s.name, "BYTES", (-1, 1)) if s.name == entry.name else s for s in self.graph_inputs]

    def unload(self) -> None:
        self._session = None
        self._idle_instances = None

    def check_batch(self, inputs: Mapping[str, np.ndarray]) -> int:
        return checked_batch(self.name, self.max_batch_size, inputs)

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        session: ort.InferenceSession | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the graph; `outputs` limits what is returned (default: every output). `session`:
        another session of this whole graph to run on, where every output is asked for."""
        own = self._session
        if own is None:
            raise ModelNotReady(f"{self.name} version {self.version} is not loaded (unloaded or replaced); retry")
        rows = self.check_batch(inputs)
        names = list(outputs) if outputs else [o.name for o in self.outputs]
        inputs = self._reshaped(inputs)
        if len(set(names)) < len(self.outputs):
            session = self._session_computing(frozenset(names))
        elif session is None and self._idle_instances is not None:
            return self._checked(self._run_on_an_instance(names, inputs), rows)
        return self._checked(dict(zip(names, (session or own).run(names, inputs))), rows)

    def _checked(self, results: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """The run's outputs as clients get them, once each has the shape the config promises:
        `rows` first (a batched model), then the config's dims. A merged run is split back by
        row offsets, so an output with other rows would hand one client another's rows."""
        shapes = self._output_shapes
        for name, array in results.items():
            expected = shapes[name]
            shape = array.shape
            if self.max_batch_size > 0:
                if not shape or shape[0] != rows:
                    raise ModelOutputError(
                        f"model {self.name!r} version {self.version}: output {name!r} has "
                        f"{shape[0] if shape else 'no'} rows for a run of {rows}; a batched model answers one row "
                        "per input row. Nothing of this run was handed out"
                    )
                shape = shape[1:]
            if name in self.graph_shapes:
                continue  # reshaped below, which checks the element count
            if len(shape) != len(expected) or any(e not in (-1, d) for e, d in zip(expected, shape)):
                raise ModelOutputError(
                    f"model {self.name!r} version {self.version}: output {name!r} has dims {list(shape)}"
                    f"{' past the batch' if self.max_batch_size > 0 else ''}; its config says {list(expected)}. "
                    "Nothing of this run was handed out"
                )
        if not self.graph_shapes:
            return results
        try:
            return self._reshaped(results)
        except ValueError as exc:
            raise ModelOutputError(
                f"model {self.name!r} version {self.version}: an output does not fit its config's reshape: {exc}"
            ) from None

    def _reshaped(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs as the graph takes them, outputs as clients get them (Triton's reshape);
        `arrays` itself (not a copy) when the config reshapes nothing."""
        if not self.graph_shapes:
            return arrays if isinstance(arrays, dict) else dict(arrays)
        batched = self.max_batch_size > 0
        out = dict(arrays)
        for name, shape in self.graph_shapes.items():
            if name in out:
                array = out[name]
                out[name] = array.reshape(((array.shape[0],) if batched else ()) + shape)
        return out

    def _run_on_an_instance(self, names: list[str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on an idle instance's session, waiting for one if all are running."""
        idle = self._idle_instances
        assert idle is not None  # predict checked
        session = idle.get()
        try:
            return dict(zip(names, session.run(names, inputs)))
        finally:
            idle.put(session)

    def _session_computing(self, outputs: frozenset[str]) -> ort.InferenceSession:
        """A session for the part of the graph that `outputs` need. onnxruntime runs every
        node of a graph whatever outputs are asked for; feature extractors with early and
        late layers, or Grad-CAM graphs asked only for scores, would pay for all of it."""
        with self._pruning:
            session = self._pruned.get(outputs)
            if session is not None:
                self._pruned.move_to_end(outputs)
                return session
            part = pruned_graph(self.path, outputs)
            if part is None:
                session = self._session  # runs whole, as onnxruntime would anyway
            else:
                session = ort.InferenceSession(
                    part, self._options, providers=list(select_providers(self.runtime.device, self.runtime.tf32))
                )
            self._pruned[outputs] = session
            if len(self._pruned) > _PRUNED_SESSIONS:
                self._pruned.popitem(last=False)
            if part is not None:
                logger.info("%s version %s: a graph for outputs %s only", self.name, self.version, sorted(outputs))
            return session
