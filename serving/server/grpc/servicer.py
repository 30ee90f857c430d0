"""GRPCInferenceService: each RPC converts protobuf -> dataplane call -> protobuf."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc
import numpy as np

from serving.protocol.codecs import decode_inputs, encode_output
from serving.protocol.errors import InvalidInput, NotEnabled, PermissionDenied, ServingError
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.server.dataplane import DataPlane, DecodedRequest, InferenceCall, RequestedOutput
from serving.server.grpc.decoding import Undecodable, refusal
from serving.server.model import OnnxModel
from serving.server.shared_memory import SharedMemoryRegions, is_local_peer

__all__ = ["InferenceServicer"]

logger = logging.getLogger(__name__)

Response = TypeVar("Response")


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


def _class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    param = output.parameters.get("classification")
    if param is None:
        return 0
    if param.WhichOneof("parameter_choice") != "int64_param":
        raise InvalidInput(f"output {output.name!r}: the 'classification' parameter must be an int64 class count")
    return param.int64_param


def _decoder(
    request: pb.ModelInferRequest, shared_memory: SharedMemoryRegions
) -> Callable[[OnnxModel], DecodedRequest]:
    def decode(model: OnnxModel) -> DecodedRequest:
        inputs = decode_inputs(request, model.inputs, shared_memory.tensor_slice)
        outputs = []
        for output in request.outputs:
            what = f"output {output.name!r}"
            sink = shared_memory.tensor_slice(output.parameters, what)
            if sink is not None and "classification" in output.parameters:
                raise InvalidInput(
                    f"{what}: classification results cannot go to shared memory; ask for one or the other"
                )
            outputs.append(RequestedOutput(output.name, _class_count(output), sink))
        return DecodedRequest(inputs, outputs)

    return decode


def _encoder(
    request_id: str,
) -> Callable[[OnnxModel, dict[str, np.ndarray], list[RequestedOutput]], pb.ModelInferResponse]:
    def encode(
        model: OnnxModel, outputs: dict[str, np.ndarray], requested: list[RequestedOutput]
    ) -> pb.ModelInferResponse:
        sinks = {r.name: r.sink for r in requested if r.sink is not None}
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
        for name, array in outputs.items():
            encode_output(name, array, response, sinks.get(name))
        return response

    return encode


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @_status_on_error
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_status_on_error
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_status_on_error
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @_status_on_error
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @_status_on_error
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = self.dataplane.model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self.dataplane.model_versions(model.name),
            platform=model.config.platform or "onnxruntime_onnx",
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.outputs],
        )

    @_status_on_error
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.dataplane.model_config(request.name, request.version))

    async def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        remaining = context.time_remaining()
        call = InferenceCall(
            request.model_name,
            request.model_version,
            request.id,
            decode=_decoder(request, self.dataplane.shared_memory),
            encode=_encoder(request.id),
            deadline=time.monotonic() + remaining if remaining is not None else None,
        )
        return await self.dataplane.handle(call)

    @_status_on_error
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in order; a failed request answers with error_message
        and the stream goes on, as the protocol's streaming extension specifies."""
        async for request in request_iterator:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except ServingError as exc:
                yield pb.ModelStreamInferResponse(error_message=f"{exc.code.name}: {exc}")
            except Exception as exc:  # a bug: report it on the stream and keep serving
                logger.exception("ModelStreamInfer failed")
                yield pb.ModelStreamInferResponse(error_message=f"INTERNAL: {type(exc).__name__}: {exc}")

    @_status_on_error
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        if request.name:
            self.dataplane.repository.entry(request.name)  # NOT_FOUND for an unknown model
        duration = pb.StatisticDuration
        stats = [
            pb.ModelStatistics(
                name=s.name,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    **{
                        key: duration(count=getattr(s, key).count, ns=getattr(s, key).ns)
                        for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
                    }
                ),
                batch_stats=[
                    pb.InferBatchStatistics(batch_size=size, compute_infer=duration(count=d.count, ns=d.ns))
                    for size, d in sorted(s.batches.items())
                ],
            )
            for s in self.dataplane.statistics.snapshot(request.name, request.version)
        ]
        return pb.ModelStatisticsResponse(model_stats=stats)

    @_status_on_error
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        models = [
            index(name=e.name, version=v, state=e.state, reason=e.reason)
            for e in self.dataplane.repository.entries()
            for v in (sorted(e.versions, key=int) or [""])
            if e.state == "READY" or not request.ready
        ]
        return pb.RepositoryIndexResponse(models=models)

    def _check_model_control(self, request: Any) -> None:
        if not self.dataplane.settings.model_control:
            raise NotEnabled("model control is disabled on this server (started with --model-control none)")
        if request.repository_name:
            raise InvalidInput(
                f"repository {request.repository_name!r}: this server has one repository; leave repository_name empty"
            )
        # unload_dependents (tritonclient always sends it) has nothing to act on: deepr
        # models have no ensembles depending on them. Config and file overrides are refused.
        unsupported = sorted(set(request.parameters) - {"unload_dependents"})
        if unsupported:
            raise InvalidInput(f"parameters {unsupported} are not supported: deepr loads models as they are on disk")

    @_status_on_error
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._check_model_control(request)
        await self.dataplane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_status_on_error
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_model_control(request)
        await self.dataplane.unload_model(request.model_name)
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
        if not (self.dataplane.settings.shared_memory_remote or is_local_peer(context.peer())):
            raise PermissionDenied(
                f"shared memory region {request.name[:64]!r}: registration is accepted from this host only (the "
                f"request came from {context.peer()}); start the server with --shared-memory-remote to allow it"
            )
        self.dataplane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_status_on_error
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.dataplane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()
