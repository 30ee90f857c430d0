"""One server to its clients, from N worker processes: what a worker does with the calls that
concern the whole server.

With `deepr serve --workers N`, N processes answer the same gRPC and HTTP ports; the kernel
hands each new connection to one of them. Inference needs nothing shared. Everything else a
client may ask through one connection and expect of the server as a whole is fanned out here,
over each worker's private Unix socket, before the answer:

- loading and unloading a model: every worker, or the answer names the worker that failed;
- shared memory: a region registered on one connection is registered in every worker (and
  unregistered in every one), so any connection may use it;
- readiness: every worker ready;
- the repository index: a model is READY only where every worker has it ready;
- statistics (and /metrics, served by worker 0): sums over the workers.

Calls arriving on the private socket are a peer's fan-out and are answered by this worker
alone (a peer over a Unix socket is never a client).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Sequence

import grpc

from serving.protocol.errors import ServingError
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.server import answers
from serving.server.repository import READY, UNLOADED
from serving.server.statistics import Duration, ModelStatistics

__all__ = ["LocalServer", "Peers", "is_peer_call", "merge_statistics", "statistics_from_protobuf"]

logger = logging.getLogger(__name__)

_PEER_SECONDS = 120.0
"""How long a fanned-out change may take (a load warms the model up first), a sibling that is
(re)starting included: the calls wait for its socket rather than fail while it comes up."""
_QUESTION_SECONDS = 3.0
"""How long a question (readiness, the index, statistics) waits for a sibling."""
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # a sibling restarting is back in a second or two: retry its socket that often
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def is_peer_call(context: Any) -> bool:
    """Whether a gRPC call came from a sibling worker over its private Unix socket."""
    peer = context.peer() or ""
    return peer.startswith("unix:")


class LocalServer:
    """The calls about the whole server when it is this one process: one worker alone, or a
    sibling's fan-out. Peers answers the same calls for N workers."""

    def __init__(self, dataplane: Any) -> None:
        self.dataplane = dataplane

    async def ready(self) -> bool:
        return self.dataplane.ready()

    async def model_ready(self, name: str, version: str) -> bool:
        return self.dataplane.model_ready(name, version)

    async def index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        return answers.repository_index(self.dataplane, ready_only)

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        return answers.model_statistics(self.dataplane, name, version)

    async def load(self, name: str) -> None:
        await self.dataplane.load_model(name)

    async def unload(self, name: str) -> None:
        await self.dataplane.unload_model(name)

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.dataplane.shared_memory.register(name, key, offset, byte_size)

    async def unregister(self, name: str) -> None:
        self.dataplane.shared_memory.unregister(name)


class WorkerFailed(ServingError):
    """Some workers did not do what the call asked; the message names each, with its reason."""

    code = grpc.StatusCode.INTERNAL


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, ServingError):
        return exc.code
    return grpc.StatusCode.INTERNAL


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ServingError) else str(exc)


class Peers:
    """The other workers of this server, reached over their Unix sockets."""

    def __init__(self, dataplane: Any, index: int, sockets: Sequence[str], token: str = "") -> None:
        self.dataplane = dataplane
        self.me = index
        """This worker's place among them."""
        self.sockets = list(sockets)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def count(self) -> int:
        return len(self.sockets)

    def _stub(self, worker: int) -> pb_grpc.GRPCInferenceServiceStub:
        channel = self._channels.get(worker)
        if channel is None:
            channel = self._channels[worker] = grpc.aio.insecure_channel(self.sockets[worker], options=_CHANNEL_OPTIONS)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    async def _each(
        self, method: str, request: Any, seconds: float = _QUESTION_SECONDS, wait: bool = True
    ) -> dict[int, Any]:
        """`method` on every other worker: its response, or the exception it raised. `wait`:
        a sibling whose socket is not there yet (restarting) is waited for, within `seconds`."""
        others = [w for w in range(self.count) if w != self.me]

        async def call(worker: int) -> Any:
            rpc = getattr(self._stub(worker), method)
            return await rpc(request, timeout=seconds, metadata=self._metadata, wait_for_ready=wait)

        results = await asyncio.gather(*(call(w) for w in others), return_exceptions=True)
        return dict(zip(others, results))

    async def _everywhere(self, local: Callable[[], Awaitable[Any]], method: str, request: Any, what: str) -> None:
        """Do `local` here and `method` on every peer; WorkerFailed naming each that failed."""
        here, there = await asyncio.gather(local(), self._each(method, request, _PEER_SECONDS), return_exceptions=True)
        failed = {self.me: here} if isinstance(here, BaseException) else {}
        if isinstance(there, BaseException):
            raise there
        failed.update({w: r for w, r in there.items() if isinstance(r, BaseException)})
        if not failed:
            return
        codes = {_code(e) for e in failed.values()}
        reasons = "; ".join(f"worker {w}: {_reason(e)}" for w, e in sorted(failed.items()))
        error = WorkerFailed(f"{what} failed in {len(failed)} of {self.count} workers: {reasons}")
        if len(codes) == 1 and len(failed) == self.count:  # the same refusal everywhere: that refusal
            error.code = codes.pop()
        raise error

    # -- model control ---------------------------------------------------------------------------------------------

    async def load(self, name: str) -> None:
        await self._everywhere(
            lambda: self.dataplane.load_model(name),
            "RepositoryModelLoad",
            pb.RepositoryModelLoadRequest(model_name=name),
            f"loading {name!r}",
        )

    async def unload(self, name: str) -> None:
        await self._everywhere(
            lambda: self.dataplane.unload_model(name),
            "RepositoryModelUnload",
            pb.RepositoryModelUnloadRequest(model_name=name),
            f"unloading {name!r}",
        )

    # -- shared memory ---------------------------------------------------------------------------------------------

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        async def here() -> None:
            self.dataplane.shared_memory.register(name, key, offset, byte_size)

        request = pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)
        try:
            await self._everywhere(here, "SystemSharedMemoryRegister", request, f"registering region {name!r}")
        except ServingError:
            await self.unregister(name, quiet=True)  # all or nothing: no worker keeps half a registration
            raise

    async def unregister(self, name: str, *, quiet: bool = False) -> None:
        async def here() -> None:
            self.dataplane.shared_memory.unregister(name)

        try:
            await self._everywhere(
                here, "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name), "unregistering"
            )
        except ServingError:
            if not quiet:
                raise

    # -- the server as a whole -------------------------------------------------------------------------------------

    async def ready(self) -> bool:
        if not self.dataplane.ready():
            return False
        answers_ = await self._each("ServerReady", pb.ServerReadyRequest(), wait=False)  # a sibling down: not ready
        return all(not isinstance(a, BaseException) and a.ready for a in answers_.values())

    async def model_ready(self, name: str, version: str) -> bool:
        if not self.dataplane.model_ready(name, version):
            return False
        answers_ = await self._each("ModelReady", pb.ModelReadyRequest(name=name, version=version), wait=False)
        return all(not isinstance(a, BaseException) and a.ready for a in answers_.values())

    async def index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        """Every worker's index as one: a model is READY (with its versions) where all have it
        ready; otherwise it carries the state and reason of a worker that does not, named."""
        local = answers.repository_index(self.dataplane)
        others = await self._each("RepositoryIndex", pb.RepositoryIndexRequest())
        by_name: dict[str, list[tuple[int, pb.RepositoryIndexResponse.ModelIndex]]] = {}
        for worker, response in [(self.me, local), *sorted(others.items())]:
            if isinstance(response, BaseException):
                raise WorkerFailed(f"the repository index of worker {worker} is not available: {_reason(response)}")
            for entry in response.models:
                by_name.setdefault(entry.name, []).append((worker, entry))
        models = []
        for name in sorted(by_name):
            entries = by_name[name]
            seen = {worker for worker, _ in entries}
            lacking = [(w, e) for w, e in entries if e.state != READY]
            if not lacking and len(seen) == self.count:
                versions = sorted({e.version for _, e in entries}, key=lambda v: int(v) if v.isdigit() else 0)
                models += [pb.RepositoryIndexResponse.ModelIndex(name=name, version=v, state=READY) for v in versions]
            elif not ready_only:
                worker, entry = lacking[0] if lacking else (min(set(range(self.count)) - seen), None)
                state = entry.state if entry is not None else "UNAVAILABLE"
                reason = entry.reason if entry is not None else "not in its repository"
                models.append(
                    pb.RepositoryIndexResponse.ModelIndex(name=name, state=state, reason=f"worker {worker}: {reason}")
                )
        return pb.RepositoryIndexResponse(models=models)

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        local = answers.model_statistics(self.dataplane, name, version)
        request = pb.ModelStatisticsRequest(name=name, version=version)
        responses = [local]
        for worker, response in sorted((await self._each("ModelStatistics", request)).items()):
            if isinstance(response, BaseException):
                raise WorkerFailed(f"the statistics of worker {worker} are not available: {_reason(response)}")
            responses.append(response)
        return answers.statistics_response(merge_statistics(responses))

    def statistics_now(self) -> list[ModelStatistics]:
        """The whole server's statistics, asked synchronously (for /metrics, off the event loop)."""
        responses = [answers.model_statistics(self.dataplane)]
        for worker in range(self.count):
            if worker == self.me:
                continue
            with grpc.insecure_channel(self.sockets[worker]) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                try:
                    responses.append(
                        stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10, metadata=self._metadata)
                    )
                except grpc.RpcError as exc:
                    logger.warning("metrics: worker %d did not answer with its statistics: %s", worker, exc.code().name)
        return merge_statistics(responses)

    async def catch_up(self) -> None:
        """A worker started late (restarted after a crash) takes the others' state: their
        shared memory regions, and the models they serve or were asked to unload."""
        others = {
            w: r
            for w, r in (await self._each("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest())).items()
            if not isinstance(r, BaseException)
        }
        for status in others.values():
            for region in status.regions.values():
                if not self.dataplane.shared_memory.status(region.name):
                    try:
                        self.dataplane.shared_memory.register(region.name, region.key, region.offset, region.byte_size)
                    except ServingError as exc:
                        logger.warning("could not take over shared memory region %s: %s", region.name, exc)
            break
        indexes = [
            r
            for r in (await self._each("RepositoryIndex", pb.RepositoryIndexRequest())).values()
            if not isinstance(r, BaseException)
        ]
        if not indexes:
            return
        local = {e.name: e for e in answers.repository_index(self.dataplane).models}
        for entry in indexes[0].models:
            mine = local.get(entry.name)
            if entry.reason == UNLOADED and mine is not None and mine.state == READY:
                await self.dataplane.unload_model(entry.name)
            elif entry.state == READY and (mine is None or mine.state != READY):
                try:
                    await self.dataplane.load_model(entry.name)
                except ServingError as exc:
                    logger.warning("could not load %s as the other workers have it: %s", entry.name, exc)


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


def merge_statistics(responses: Sequence[pb.ModelStatisticsResponse]) -> list[ModelStatistics]:
    """Per model version, the sums over `responses` (the workers'); the latest last inference."""
    merged: dict[tuple[str, str], ModelStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            one = statistics_from_protobuf(stats)
            key = (one.name, one.version)
            total = merged.get(key)
            if total is None:
                merged[key] = one
                continue
            total.last_inference_ms = max(total.last_inference_ms, one.last_inference_ms)
            total.inference_count += one.inference_count
            total.execution_count += one.execution_count
            for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                mine, theirs = getattr(total, field), getattr(one, field)
                mine.count += theirs.count
                mine.ns += theirs.ns
            for size, d in one.batches.items():
                slot = total.batches.setdefault(size, Duration())
                slot.count += d.count
                slot.ns += d.ns
    return [merged[k] for k in sorted(merged)]
