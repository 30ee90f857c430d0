"""GRPCInferenceService: each RPC converts protobuf -> dataplane call -> protobuf."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from serving.protocol.errors import ServingError
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.server import answers
from serving.server.dataplane import DataPlane, InferenceCall
from serving.server.grpc.decoding import Undecodable, refusal
from serving.server.infer_request import request_decoder, response_encoder
from serving.server.load_override import LoadOverride
from serving.server.peers import LocalServer, Peers
from serving.server.shared_memory import is_local_peer

__all__ = ["InferenceServicer"]

logger = logging.getLogger(__name__)

Response = TypeVar("Response")

STREAM_WINDOW = 256
"""Requests of one ModelStreamInfer stream running or answered and not yet written, at most."""


def _status_on_error(rpc: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Map deepr's errors to their gRPC status; anything else is INTERNAL, and logged."""

    @functools.wraps(rpc)
    async def wrapper(self: "InferenceServicer", request: Any, context: grpc.aio.ServicerContext) -> Response:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
        try:
            return await rpc(self, request, context)
        except ServingError as exc:
            await context.abort(exc.code, str(exc))
        except Exception as exc:  # a bug, not bad input: keep the server up and say so
            logger.exception("%s failed", rpc.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{rpc.__name__} failed: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, whole: LocalServer | Peers) -> None:
        self.dataplane = dataplane
        self.whole = whole
        """Who answers the calls about the whole server: this process (a server alone, or a
        worker's private socket), or every worker (a worker's public port)."""

    @_status_on_error
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_status_on_error
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.whole.ready())

    @_status_on_error
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await self.whole.model_ready(request.name, request.version))

    @_status_on_error
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @_status_on_error
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return answers.model_metadata(self.dataplane, request.name, request.version)

    @_status_on_error
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.dataplane.model_config(request.name, request.version))

    async def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        remaining = context.time_remaining()
        call = InferenceCall(
            request.model_name,
            request.model_version,
            request.id,
            decode=request_decoder(request, self.dataplane.shared_memory),
            encode=response_encoder(request.id),
            deadline=time.monotonic() + remaining if remaining is not None else None,
        )
        return await self.dataplane.handle(call)

    @_status_on_error
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in the order they came; a failed request answers with
        error_message (and its id) and the stream goes on, as the streaming extension specifies.

        Requests run as they arrive, up to STREAM_WINDOW of them ahead of the answer being
        written, each batched with every other request the server holds: a client streaming
        many requests gets them merged and overlapped, as unary calls in flight are. Past the
        window the stream is not read, and HTTP/2's flow control holds the client back."""
        window: asyncio.Queue[pb.ModelInferRequest | asyncio.Task | Undecodable | None]
        window = asyncio.Queue(maxsize=STREAM_WINDOW)
        unanswered = 0
        loop = asyncio.get_running_loop()

        async def read() -> None:
            nonlocal unanswered
            try:
                async for request in request_iterator:
                    if isinstance(request, Undecodable):
                        await window.put(request)
                        break
                    # Alone on the stream, a request is answered where it is written, with no task
                    # of its own (the cheapest path, for clients that wait for each answer); one
                    # that comes while others are unanswered starts at once.
                    item = request if unanswered == 0 else loop.create_task(self._stream_answer(request, context))
                    unanswered += 1
                    if window.full():
                        await window.put(item)
                    else:
                        window.put_nowait(item)
            except asyncio.CancelledError:
                raise  # the answering side has gone: nobody waits for the end mark (the window may be full)
            except BaseException:
                await window.put(None)
                raise
            await window.put(None)

        reader = loop.create_task(read())
        try:
            while (item := await window.get()) is not None:
                if isinstance(item, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(item))
                elif isinstance(item, asyncio.Task):
                    yield await item
                else:
                    yield await self._stream_answer(item, context)
                unanswered -= 1
            await reader  # a failure to read the stream ends it with that error
        finally:
            reader.cancel()
            while not window.empty():  # the client left: what it sent is not run for nobody
                item = window.get_nowait()
                if isinstance(item, asyncio.Task):
                    item.cancel()

    async def _stream_answer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
        except ServingError as exc:
            message = f"{exc.code.name}: {exc}"
        except Exception as exc:  # a bug: report it on the stream and keep serving
            logger.exception("ModelStreamInfer failed")
            message = f"INTERNAL: {type(exc).__name__}: {exc}"
        failed = pb.ModelInferResponse(
            id=request.id, model_name=request.model_name, model_version=request.model_version
        )
        return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)

    @_status_on_error
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        return await self.whole.statistics(request.name, request.version)

    @_status_on_error
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return await self.whole.index(request.ready)

    @_status_on_error
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        answers.check_model_control(self.dataplane, request.repository_name)
        await self.whole.load(request.model_name, LoadOverride.from_grpc(request.model_name, request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_status_on_error
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        answers.check_model_control(self.dataplane, request.repository_name)
        answers.check_unload_parameters(request.parameters)
        await self.whole.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_status_on_error
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = self.dataplane.shared_memory.status(request.name)
        return pb.SystemSharedMemoryStatusResponse(
            regions={r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions}
        )

    @_status_on_error
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        answers.check_registration(self.dataplane, request.name, is_local_peer(context.peer()), context.peer())
        await self.whole.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_status_on_error
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self.whole.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_status_on_error
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        answers.cuda_region_status(request.name)  # NOT_FOUND for a region asked for by name
        return pb.CudaSharedMemoryStatusResponse()  # and none otherwise

    @_status_on_error
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        answers.refuse_cuda_registration(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    @_status_on_error
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # none are registered: nothing is left after
