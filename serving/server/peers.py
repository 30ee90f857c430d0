"""One server to its clients, from N worker processes: what a worker does with the calls that
concern the whole server.

With `deepr serve --workers N`, N processes answer the same gRPC and HTTP ports; the kernel
hands each new connection to one of them. Inference needs nothing shared. Everything else a
client may ask through one connection and expect of the server as a whole goes further:

- a change (loading or unloading a model, registering or unregistering a shared memory
  region) goes to the parent, which applies the changes to one name in the order it receives
  them, in every worker (serving/server/coordinator.py), so all workers end in the state of
  the last call, as one Triton process would;
- a question (readiness, the repository index, statistics) is asked of every sibling over
  its private Unix socket, where the sibling answers for itself alone; a sibling that does
  not answer makes the server not ready, and is named in the log.

A worker that starts (or starts again after a crash) takes over the server's state from the
parent before it binds the public ports: the models unloaded or loaded on request, the
registered regions, and the statistics of the process it replaces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Sequence

import grpc

from serving.protocol.errors import ServingError
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.server import answers
from serving.server.dataplane import DataPlane
from serving.server.load_override import LoadOverride
from serving.server.repository import READY
from serving.server.statistics import Duration, ModelStatistics, summed
from serving.server.worker_rpc import CHANNEL_OPTIONS, SUPERVISOR_SERVICE, RemoteError, UnixChannels, call_json

__all__ = ["LocalServer", "Peers", "statistics_from_protobuf", "worker_status"]

logger = logging.getLogger(__name__)

CONTROL_SECONDS = 150.0
"""How long a change may take in every worker (a load warms the model up first; a worker
restarting is waited for)."""
_QUESTION_SECONDS = 3.0
"""How long a question waits for a sibling; one that has not answered by then is silent."""
_CATCH_UP_SECONDS = 30.0
_SILENT_LOG_SECONDS = 10.0
"""A silent sibling is logged once per this long, not once per question."""


def worker_status(dataplane: DataPlane) -> dict[str, Any]:
    """What a worker tells its parent when asked: readiness, statistics, queues."""
    return {
        "ready": dataplane.ready(),
        "statistics": [s.to_json() for s in dataplane.statistics.snapshot()],
        "pending": [[name, version, count] for (name, version), count in dataplane.pending().items()],
    }


class LocalServer:
    """The calls about the whole server when it is this one process: a server alone, or a
    worker answering its parent or a sibling. Peers answers the same calls for N workers."""

    def __init__(self, dataplane: DataPlane, serving: Callable[[], bool] = lambda: True) -> None:
        """`serving`: whether this process answers clients yet (a worker that has not bound
        its public ports is not ready, whatever its models)."""
        self.dataplane = dataplane
        self.serving = serving

    async def ready(self) -> bool:
        return self.serving() and self.dataplane.ready()

    async def model_ready(self, name: str, version: str) -> bool:
        return self.dataplane.model_ready(name, version)

    async def index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        return answers.repository_index(self.dataplane, ready_only)

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        return answers.model_statistics(self.dataplane, name, version)

    async def load(self, name: str, override: LoadOverride | None = None) -> None:
        await self.dataplane.load_model(name, override)

    async def unload(self, name: str) -> None:
        await self.dataplane.unload_model(name)

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.dataplane.shared_memory.register(name, key, offset, byte_size)

    async def unregister(self, name: str) -> None:
        self.dataplane.shared_memory.unregister(name)

    async def close(self) -> None:
        pass


class Peers:
    """The parent and the other workers of this server, reached over their Unix sockets."""

    def __init__(
        self, dataplane: DataPlane, index: int, sockets: Sequence[str], supervisor: str, token: str = ""
    ) -> None:
        self.dataplane = dataplane
        self.me = index
        """This worker's place among them."""
        self.sockets = list(sockets)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._supervisor = grpc.aio.insecure_channel(supervisor, options=CHANNEL_OPTIONS)
        self._siblings = UnixChannels(sockets)
        self._silent_logged: dict[int, float] = {}

    @property
    def count(self) -> int:
        return len(self.sockets)

    async def close(self) -> None:
        await asyncio.gather(self._supervisor.close(), self._siblings.close(), return_exceptions=True)

    # -- changes: through the parent, in its order -----------------------------------------------------------------

    async def _change(self, request: dict[str, Any]) -> None:
        await call_json(
            self._supervisor, SUPERVISOR_SERVICE, "Control", request, timeout=CONTROL_SECONDS, metadata=self._metadata
        )

    async def load(self, name: str, override: LoadOverride | None = None) -> None:
        await self._change({"op": "load", "name": name, "parameters": override.to_json() if override else {}})

    async def unload(self, name: str) -> None:
        await self._change({"op": "unload", "name": name})

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self._change({"op": "register", "name": name, "key": key, "offset": offset, "byte_size": byte_size})

    async def unregister(self, name: str) -> None:
        await self._change({"op": "unregister", "name": name})

    # -- questions: every sibling, each answering for itself -------------------------------------------------------

    async def _ask(self, method: str, request: Any) -> dict[int, Any]:
        """`method` of every sibling that answers within _QUESTION_SECONDS; the silent ones are
        logged (once in a while) and left out."""
        others = [w for w in range(self.count) if w != self.me]

        async def ask(worker: int) -> Any:
            stub = pb_grpc.GRPCInferenceServiceStub(await self._siblings.get(worker))
            try:
                return await getattr(stub, method)(
                    request, timeout=_QUESTION_SECONDS, metadata=self._metadata, wait_for_ready=False
                )
            except grpc.aio.AioRpcError:
                await self._siblings.drop(worker)  # the next question connects afresh
                raise

        results = await asyncio.gather(*(ask(w) for w in others), return_exceptions=True)
        answered = {}
        for worker, result in zip(others, results):
            if isinstance(result, BaseException):
                self._log_silent(worker, method, result)
            else:
                answered[worker] = result
        return answered

    def _log_silent(self, worker: int, method: str, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._silent_logged.get(worker, -_SILENT_LOG_SECONDS) < _SILENT_LOG_SECONDS:
            return
        self._silent_logged[worker] = now
        reason = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.aio.AioRpcError) else repr(error)
        logger.warning("worker %d did not answer %s (%s): left out of the answer", worker, method, reason)

    async def ready(self) -> bool:
        if not self.dataplane.ready():
            return False
        answered = await self._ask("ServerReady", pb.ServerReadyRequest())
        return len(answered) == self.count - 1 and all(a.ready for a in answered.values())

    async def model_ready(self, name: str, version: str) -> bool:
        if not self.dataplane.model_ready(name, version):
            return False
        answered = await self._ask("ModelReady", pb.ModelReadyRequest(name=name, version=version))
        return len(answered) == self.count - 1 and all(a.ready for a in answered.values())

    async def index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        """The answering workers' indexes as one: a model is READY (with its versions) where
        each has it ready; otherwise it carries the state and reason of one that does not, named."""
        local = answers.repository_index(self.dataplane)
        others = await self._ask("RepositoryIndex", pb.RepositoryIndexRequest())
        workers = [(self.me, local), *sorted(others.items())]
        by_name: dict[str, list[tuple[int, pb.RepositoryIndexResponse.ModelIndex]]] = {}
        for worker, response in workers:
            for entry in response.models:
                by_name.setdefault(entry.name, []).append((worker, entry))
        answering = {worker for worker, _ in workers}
        models = []
        for name in sorted(by_name):
            entries = by_name[name]
            seen = {worker for worker, _ in entries}
            lacking = [(w, e) for w, e in entries if e.state != READY]
            if not lacking and seen == answering:
                versions = sorted({e.version for _, e in entries}, key=lambda v: int(v) if v.isdigit() else 0)
                models += [pb.RepositoryIndexResponse.ModelIndex(name=name, version=v, state=READY) for v in versions]
            elif not ready_only:
                worker, entry = lacking[0] if lacking else (min(answering - seen), None)
                state = entry.state if entry is not None else "UNAVAILABLE"
                reason = entry.reason if entry is not None else "not in its repository"
                models.append(
                    pb.RepositoryIndexResponse.ModelIndex(name=name, state=state, reason=f"worker {worker}: {reason}")
                )
        return pb.RepositoryIndexResponse(models=models)

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        local = self.dataplane.statistics.snapshot(name, version)
        if name:
            self.dataplane.repository.entry(name)  # NOT_FOUND for an unknown model
        others = await self._ask("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version))
        parts = [local, *([statistics_from_protobuf(s) for s in r.model_stats] for r in others.values())]
        return answers.statistics_response(summed(parts))

    # -- starting ---------------------------------------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Take the server's state from the parent: the statistics of the process this one
        replaces, the registered regions, and the models loaded or unloaded on request. What
        cannot be taken over is a warning: a worker never dies of its catch-up."""
        try:
            state = await call_json(
                self._supervisor,
                SUPERVISOR_SERVICE,
                "State",
                {"worker": self.me},
                timeout=_CATCH_UP_SECONDS,
                metadata=self._metadata,
            )
        except RemoteError as exc:
            logger.warning("could not ask the parent for the server's state (%s); starting from the repository", exc)
            return
        self.dataplane.statistics.absorb(ModelStatistics.from_json(s) for s in state.get("statistics", []))
        regions = self.dataplane.shared_memory
        for name, region in state.get("regions", {}).items():
            try:
                regions.register(name, region["key"], region["offset"], region["byte_size"])
            except ServingError as exc:
                logger.warning("could not take over shared memory region %r: %s", name, exc)
        overrides = state.get("overrides", {})
        for name, wanted in state.get("models", {}).items():
            try:
                await self._bring(name, wanted, LoadOverride.from_json(name, overrides.get(name, {})))
            except ServingError as exc:
                logger.warning("could not %s %s as the other workers have: %s", wanted, name, exc)

    async def _bring(self, name: str, wanted: str, override: LoadOverride) -> None:
        ready = self.dataplane.model_ready(name)
        if wanted == "unload" and ready:
            await self.dataplane.unload_model(name)
        elif wanted == "load" and (override or not ready):  # what a request sent is not on disk
            await self.dataplane.load_model(name, override)


def statistics_from_protobuf(stats: pb.ModelStatistics) -> ModelStatistics:
    def duration(d: pb.StatisticDuration) -> Duration:
        return Duration(d.count, d.ns)

    inference = stats.inference_stats
    return ModelStatistics(
        name=stats.name,
        version=stats.version,
        last_inference_ms=stats.last_inference,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        success=duration(inference.success),
        fail=duration(inference.fail),
        queue=duration(inference.queue),
        compute_input=duration(inference.compute_input),
        compute_infer=duration(inference.compute_infer),
        compute_output=duration(inference.compute_output),
        batches={b.batch_size: duration(b.compute_infer) for b in stats.batch_stats},
    )
