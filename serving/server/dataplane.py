"""The server's logic, independent of the transport: health, metadata, inference.

A transport (the gRPC servicer) hands each inference over as an InferenceCall: the model it
names, and how to decode its tensors and encode the answer in the transport's own form.
DataPlane.handle owns everything between: model lookup and readiness, admission, timing
of each phase, the batcher, the classification extension, statistics and logs, so a
second transport is only its own decoding and encoding.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

import numpy as np

from serving import __version__
from serving.protocol.classification import top_k_strings
from serving.protocol.codecs import TensorSink, as_text
from serving.protocol.errors import InvalidInput, ModelNotFound, Overloaded, ServingError
from serving.protocol.generated import model_config_pb2 as mc
from serving.server.admission import InflightLimit
from serving.server.batching import BatchingPolicy, BatchTimings, DynamicBatcher
from serving.server.ensemble import EnsembleModel
from serving.server.load_override import LoadOverride
from serving.server.model import OnnxModel, request_rows
from serving.server.pictures import PictureDecoder
from serving.server.repository import NOT_LOADED, READY, UNLOADED, ModelRepository
from serving.server.settings import ServerSettings
from serving.server.shared_memory import SharedMemoryRegions
from serving.server.statistics import StatisticsRegistry

__all__ = [
    "DataPlane",
    "RequestedOutput",
    "DecodedRequest",
    "InferenceCall",
    "EXTENSIONS",
]

logger = logging.getLogger(__name__)

MAX_ENSEMBLE_DEPTH = 8
"""Ensembles whose steps are ensembles nest at most this deep; deeper is taken for a cycle."""
_ENSEMBLE_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("ensemble_depth", default=0)

Response = TypeVar("Response")

EXTENSIONS = (
    "classification",
    "model_configuration",
    "streaming",
    "statistics",
    "model_repository",
    "system_shared_memory",
)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    class_count: int = 0
    """> 0: return the top `class_count` classes as BYTES instead of the tensor."""
    sink: TensorSink | None = None
    """Where the output goes outside the message (a shared memory slice), or None."""


@dataclass(frozen=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    """Requested outputs; empty: every output, in the message."""


@dataclass(frozen=True)
class InferenceCall(Generic[Response]):
    """One inference request as a transport received it."""

    model_name: str
    model_version: str
    request_id: str
    decode: Callable[[OnnxModel], DecodedRequest]
    """The request's tensors, checked against the model (InvalidInput otherwise)."""
    encode: Callable[[OnnxModel, dict[str, np.ndarray], list[RequestedOutput]], Response]
    """The answer in the transport's form."""
    deadline: float | None = None
    """time.monotonic() after which the request must not start running."""


class DataPlane:
    def __init__(self, repository: ModelRepository, settings: ServerSettings) -> None:
        self.repository = repository
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=settings.infer_threads, thread_name_prefix="deepr-infer")
        self.statistics = StatisticsRegistry()
        self.admission = InflightLimit(settings.max_inflight)
        self._batchers: dict[OnnxModel, DynamicBatcher] = {}
        self._runs_alone = 0
        self._started = False
        self.shared_memory = SharedMemoryRegions(enabled=settings.shared_memory, group=settings.shared_memory_gid())
        self.pictures = PictureDecoder(settings.decode_threads, settings.max_picture_pixels)

    def start(self) -> None:
        """Load the models the settings name at startup (every one by default); failures leave
        that model UNAVAILABLE, and the others are listed as not loaded."""
        wanted = self.settings.startup_models
        if wanted == "*":
            self.repository.load_all()
        else:
            self.repository.load_some([n for n in wanted.split(",") if n])
        self._started = True

    async def close(self) -> None:
        """Stop the batch schedulers (after their runs finish) and the inference threads."""
        batchers, self._batchers = list(self._batchers.values()), {}
        await asyncio.gather(*(b.close() for b in batchers))
        self._executor.shutdown(wait=True)
        self.pictures.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self._started:
            return False
        if self.settings.strict_readiness:
            # Every model the server means to serve, those it is still building included, is
            # READY; models unloaded on request do not count: the operator asked for that.
            return all(e.state == READY or e.reason in (UNLOADED, NOT_LOADED) for e in self.repository.entries())
        return True

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        off = {
            "model_repository": not self.settings.model_control,
            "system_shared_memory": not self.shared_memory.enabled,
        }
        return self.settings.server_id, __version__, tuple(e for e in EXTENSIONS if not off.get(e))

    def model(self, name: str, version: str = "") -> OnnxModel:
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for unknown models too: readiness probes ask, they should not fail."""
        try:
            entry = self.repository.entry(name)
        except ModelNotFound:
            return False
        return entry.state == READY and (not version or version in entry.versions)

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.model(name, version).config

    def model_versions(self, name: str) -> list[str]:
        return sorted(self.repository.entry(name).versions, key=int)

    async def handle(self, call: InferenceCall[Response]) -> Response:
        """Answer one inference request end to end, counting it in the statistics and logs
        whether it succeeds or fails."""
        with _Accounting(call, self.statistics) as account:
            model = account.model = self.model(call.model_name, call.model_version)
            with self.admission.admit(f"model {model.name!r}"):
                request = call.decode(model)
                if model.encoded_input is not None:
                    inputs = await self.pictures.decode(request.inputs, *model.encoded_input)
                    request = DecodedRequest(inputs, request.outputs)
                account.decoded(request_rows(model, request.inputs))
                outputs, account.timings = await self.infer(model, request.inputs, request.outputs, call.deadline)
                account.inferred()
                return call.encode(model, outputs, request.outputs)

    async def infer(
        self,
        model: OnnxModel,
        inputs: dict[str, np.ndarray],
        requested: list[RequestedOutput],
        deadline: float | None = None,
    ) -> tuple[dict[str, np.ndarray], BatchTimings]:
        """Run `model` on decoded inputs, through its dynamic batcher when its config has one,
        and apply the classification extension; the outputs, and what the request spent
        queued and in onnxruntime. `deadline` (time.monotonic()) drops it unrun once passed."""
        known = {o.name for o in model.outputs}
        unknown = [r.name for r in requested if r.name not in known]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; model {model.name!r} has {sorted(known)}")
        names = [r.name for r in requested]
        rows = model.check_batch(inputs)
        if isinstance(model, EnsembleModel):
            outputs, spent = await self._run_ensemble(model, inputs, names, rows, deadline)
        elif (batcher := self._batcher(model)) is not None:
            outputs, spent = await batcher.infer(inputs, names, deadline)
        else:
            outputs, spent = await self._run_alone(model, inputs, names)
        labels = self.repository.entry(model.name).labels
        for r in requested:
            if r.class_count:
                outputs[r.name] = top_k_strings(
                    outputs[r.name], r.class_count, labels.get(r.name), batched=model.max_batch_size > 0
                )
        return outputs, spent

    async def _run_ensemble(
        self, model: EnsembleModel, inputs: dict[str, np.ndarray], names: list[str], rows: int, deadline: float | None
    ) -> tuple[dict[str, np.ndarray], BatchTimings]:
        """The ensemble's steps, each as its model runs; refused past MAX_ENSEMBLE_DEPTH nested
        ensembles (steps naming each other in a circle)."""
        depth = _ENSEMBLE_DEPTH.get()
        if depth >= MAX_ENSEMBLE_DEPTH:
            raise InvalidInput(
                f"ensemble {model.name!r} runs inside {depth} ensembles already; at most {MAX_ENSEMBLE_DEPTH} "
                "nest (do the ensembles' steps name each other in a circle?)"
            )
        token = _ENSEMBLE_DEPTH.set(depth + 1)
        try:
            started = time.perf_counter_ns()
            outputs = await model.run(inputs, names, self._step_runner(deadline))
            return outputs, BatchTimings(0, time.perf_counter_ns() - started, rows)
        finally:
            _ENSEMBLE_DEPTH.reset(token)

    def _step_runner(
        self, deadline: float | None
    ) -> Callable[[str, str, dict[str, np.ndarray], list[str]], Awaitable[dict[str, np.ndarray]]]:
        """How an ensemble runs one step: the step's model as any request runs it."""

        async def step(name: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict:
            model = self.model(name, version)
            start = time.perf_counter_ns()
            try:
                for text in model.text_inputs:
                    inputs[text] = as_text(inputs[text], text)
                if model.encoded_input is not None:  # picture files, decoded as for its own requests
                    inputs = await self.pictures.decode(inputs, *model.encoded_input)
                made, spent = await self.infer(model, inputs, [RequestedOutput(o) for o in outputs], deadline)
            except ServingError:  # counted against the step's model too, as Triton counts it
                self.statistics.record_failure(model.name, model.version, time.perf_counter_ns() - start)
                raise
            total = time.perf_counter_ns() - start
            self.statistics.record_success(
                model.name,
                model.version,
                batch=request_rows(model, inputs),
                total_ns=total,
                input_ns=0,
                queue_ns=spent.queue_ns,
                infer_ns=spent.infer_ns,
                output_ns=max(total - spent.queue_ns - spent.infer_ns, 0),
            )
            return made

        return step

    async def _run_alone(
        self, model: OnnxModel, inputs: dict[str, np.ndarray], names: list[str]
    ) -> tuple[dict[str, np.ndarray], BatchTimings]:
        """One onnxruntime run for one request. The run is the server's work until it ends,
        whether or not its client waits for it: busy() says so and its execution is counted."""
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter_ns()
        rows = request_rows(model, inputs)

        def run() -> tuple[dict[str, np.ndarray], BatchTimings]:
            started = time.perf_counter_ns()
            outputs = model.predict(inputs, names or None)
            spent = BatchTimings(started - submitted, time.perf_counter_ns() - started, rows)
            self.statistics.record_execution(model.name, model.version, batch_size=rows, infer_ns=spent.infer_ns)
            return outputs, spent

        def ended(_: object) -> None:
            try:
                loop.call_soon_threadsafe(self._run_ended)
            except RuntimeError:  # the loop is closed: nothing is waiting any more
                pass

        self._runs_alone += 1
        future = self._executor.submit(run)
        future.add_done_callback(ended)
        return await asyncio.wrap_future(future)

    def _run_ended(self) -> None:
        self._runs_alone -= 1

    def busy(self) -> bool:
        """Whether a request is held or any model's batcher or run still has work (a run
        goes on after its client has left)."""
        return (
            self.admission.inflight > 0
            or self._runs_alone > 0
            or any(not b.idle for b in list(self._batchers.values()))
        )

    def pending(self) -> dict[tuple[str, str], int]:
        """Requests waiting in each model version's batch queue."""
        return {(m.name, m.version): b.queued for m, b in list(self._batchers.items())}

    async def load_model(self, name: str, override: LoadOverride | None = None) -> None:
        """Load or reload `name` from the repository, or with what the request sent
        (`override`). The versions already loaded keep serving until the new ones are ready;
        requests they accepted are answered by them."""

        def load() -> None:
            if not override:
                self.repository.reload(name)
                return
            prepared = override.prepare(name)
            try:
                self.repository.reload(name, prepared)
            finally:
                prepared.discard()  # the sessions hold the graphs: the files are not read again

        await asyncio.get_running_loop().run_in_executor(None, load)
        await self._retire_replaced()

    async def unload_model(self, name: str, *, forget: bool = False) -> None:
        """Stop serving `name`: new requests are refused, accepted ones are answered;
        `forget` drops it from the index too (its folder was removed)."""
        self.repository.unload(name, forget=forget)
        await self._retire_replaced()

    async def _retire_replaced(self) -> None:
        current = {m for e in self.repository.entries() for m in e.versions.values()}
        retired = [self._batchers.pop(m) for m in list(self._batchers) if m not in current]
        await asyncio.gather(*(b.drain() for b in retired))

    def _batcher(self, model: OnnxModel) -> DynamicBatcher | None:
        batcher = self._batchers.get(model)
        if batcher is None:
            if not self.repository.is_current(model):
                return None  # replaced while this request was decoded: it runs alone on the old version
            policy = BatchingPolicy.from_config(model.config, model.run_seconds)
            if policy is None:
                return None

            def record(size: int, infer_ns: int, cold: bool) -> None:
                self.statistics.record_execution(
                    model.name, model.version, batch_size=size, infer_ns=infer_ns, cold=cold
                )

            batcher = self._batchers[model] = DynamicBatcher(model, policy, self._executor, record)
        return batcher


class _Accounting:
    """One request's statistics and logs: its phases timed as it goes, then counted as a
    success or a failure (a refusal for load is counted, and logged in bulk elsewhere)."""

    def __init__(self, call: InferenceCall, statistics: StatisticsRegistry) -> None:
        self.call = call
        self.statistics = statistics
        self.model: OnnxModel | None = None
        self.timings = BatchTimings()
        self.rows = 1
        self.start = self._decoded = self._inferred = time.perf_counter_ns()

    def decoded(self, rows: int) -> None:
        self.rows = rows
        self._decoded = time.perf_counter_ns()

    def inferred(self) -> None:
        self._inferred = time.perf_counter_ns()

    def __enter__(self) -> "_Accounting":
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, traceback: object) -> None:
        if exc is not None:
            if not isinstance(exc, Exception):  # cancelled: the client left, nothing failed
                return
            if self.model is not None:
                self.statistics.record_failure(self.model.name, self.model.version, time.perf_counter_ns() - self.start)
            if not isinstance(exc, Overloaded):  # refusals are logged in bulk, not one line each
                _log_failure(self.call, exc, self.start)
            return
        assert self.model is not None
        end = time.perf_counter_ns()
        if logger.isEnabledFor(logging.DEBUG):
            _log_success(self.call, self.model, end - self.start, self.timings.batch_size)
        self.statistics.record_success(
            self.model.name,
            self.model.version,
            batch=self.rows,
            total_ns=end - self.start,
            input_ns=self._decoded - self.start,
            queue_ns=self.timings.queue_ns,
            infer_ns=self.timings.infer_ns,
            output_ns=end - self._inferred,
        )


def _log_success(call: InferenceCall, model: OnnxModel, total_ns: int, batch_size: int) -> None:
    logger.debug(
        "request %s: %s version %s answered in %.2f ms",
        call.request_id or "-",
        model.name,
        model.version,
        total_ns / 1e6,
        extra={
            "request_id": call.request_id,
            "model": model.name,
            "version": model.version,
            "status": "OK",
            "duration_ms": round(total_ns / 1e6, 3),
            "batch": batch_size,
        },
    )


def _log_failure(call: InferenceCall, exc: Exception, start_ns: int) -> None:
    """Failed requests are logged at WARNING with their id (the client's, if it sent one)."""
    status = exc.code.name if isinstance(exc, ServingError) else "INTERNAL"
    duration = round((time.perf_counter_ns() - start_ns) / 1e6, 3)
    logger.warning(
        "request %s for %s failed: %s: %s",
        call.request_id or "-",
        call.model_name,
        status,
        exc,
        extra={
            "request_id": call.request_id,
            "model": call.model_name,
            "version": call.model_version,
            "status": status,
            "duration_ms": duration,
        },
    )
