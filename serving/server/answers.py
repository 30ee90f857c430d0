"""The protocol's answers that are not inference, as V2 protobuf messages, for every transport:
gRPC sends them as they are, HTTP as their JSON form. Model control checks live here too, so
both transports refuse the same requests with the same words."""

from __future__ import annotations

from typing import Mapping, Sequence

from serving.protocol.errors import InvalidInput, NotEnabled, NotFound, PermissionDenied
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.server.dataplane import DataPlane
from serving.server.load_override import IGNORED_PARAMETERS
from serving.server.repository import READY
from serving.server.statistics import ModelStatistics

__all__ = [
    "model_metadata",
    "model_statistics",
    "statistics_response",
    "repository_index",
    "check_model_control",
    "check_unload_parameters",
    "check_registration",
    "refuse_cuda_registration",
    "cuda_region_status",
]


def model_metadata(dataplane: DataPlane, name: str, version: str = "") -> pb.ModelMetadataResponse:
    model = dataplane.model(name, version)
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=dataplane.model_versions(model.name),
        platform=model.config.platform or "onnxruntime_onnx",
        inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.inputs],
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.outputs],
    )


def model_statistics(dataplane: DataPlane, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
    if name:
        dataplane.repository.entry(name)  # NOT_FOUND for an unknown model
    return statistics_response(dataplane.statistics.snapshot(name, version))


def statistics_response(snapshot: Sequence[ModelStatistics]) -> pb.ModelStatisticsResponse:
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
        for s in snapshot
    ]
    return pb.ModelStatisticsResponse(model_stats=stats)


def repository_index(dataplane: DataPlane, ready_only: bool = False) -> pb.RepositoryIndexResponse:
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[
            index(name=e.name, version=v, state=e.state, reason=e.reason)
            for e in dataplane.repository.entries()
            for v in (sorted(e.versions, key=int) or [""])
            if e.state == READY or not ready_only
        ]
    )


def check_model_control(dataplane: DataPlane, repository_name: str) -> None:
    """Refuse a load or unload this server does not take (InvalidInput, NotEnabled)."""
    if not dataplane.settings.model_control:
        raise NotEnabled("model control is disabled on this server (started with --model-control none)")
    if repository_name:
        raise InvalidInput(
            f"repository {repository_name!r}: this server has one repository; leave repository_name empty"
        )


def check_unload_parameters(parameters: Mapping) -> None:
    """An unload takes no parameters but the one tritonclient always sends (InvalidInput)."""
    unsupported = sorted(set(parameters) - IGNORED_PARAMETERS)
    if unsupported:
        raise InvalidInput(f"parameters {unsupported} are not taken by an unload")


def check_registration(dataplane: DataPlane, region: str, local_peer: bool, peer: str) -> None:
    """Shared memory names objects on the server's host: registrations come from it only,
    unless the server was told otherwise (PermissionDenied)."""
    if not (dataplane.settings.shared_memory_remote or local_peer):
        raise PermissionDenied(
            f"shared memory region {region[:64]!r}: registration is accepted from this host only (the "
            f"request came from {peer}); start the server with --shared-memory-remote to allow it"
        )


def cuda_region_status(name: str) -> list:
    """CUDA shared memory regions: deepr holds none (it does not open CUDA IPC handles), so the
    list is empty, and a region asked for by name is not found, as a Triton without GPUs answers."""
    if name:
        raise NotFound(f"Unable to find cuda shared memory region: {name[:64]!r}; this server registers none")
    return []


def refuse_cuda_registration(name: str) -> None:
    """Registering CUDA memory is refused, naming why and what works instead (NotEnabled)."""
    raise NotEnabled(
        f"failed to register CUDA shared memory region {name[:64]!r}: this server does not open CUDA IPC "
        "handles (its onnxruntime sessions run in their own process); send tensors in the request, or in "
        "system shared memory (register_system_shared_memory)"
    )
