"""The protocol's answers that are not inference, as V2 protobuf messages, for every transport:
gRPC sends them as they are, HTTP as their JSON form. Model control checks live here too, so
both transports refuse the same requests with the same words."""

from __future__ import annotations

from typing import Mapping, Sequence

from serving.protocol.errors import InvalidInput, NotEnabled, PermissionDenied
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.server.dataplane import DataPlane
from serving.server.repository import READY
from serving.server.statistics import ModelStatistics

__all__ = [
    "model_metadata",
    "model_statistics",
    "statistics_response",
    "repository_index",
    "check_model_control",
    "check_registration",
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


def check_model_control(dataplane: DataPlane, repository_name: str, parameters: Mapping) -> None:
    """Refuse a load or unload this server does not take (InvalidInput, NotEnabled)."""
    if not dataplane.settings.model_control:
        raise NotEnabled("model control is disabled on this server (started with --model-control none)")
    if repository_name:
        raise InvalidInput(
            f"repository {repository_name!r}: this server has one repository; leave repository_name empty"
        )
    # unload_dependents (tritonclient always sends it) has nothing to act on: deepr
    # models have no ensembles depending on them. Config and file overrides are refused.
    unsupported = sorted(set(parameters) - {"unload_dependents"})
    if unsupported:
        raise InvalidInput(f"parameters {unsupported} are not supported: deepr loads models as they are on disk")


def check_registration(dataplane: DataPlane, region: str, local_peer: bool, peer: str) -> None:
    """Shared memory names objects on the server's host: registrations come from it only,
    unless the server was told otherwise (PermissionDenied)."""
    if not (dataplane.settings.shared_memory_remote or local_peer):
        raise PermissionDenied(
            f"shared memory region {region[:64]!r}: registration is accepted from this host only (the "
            f"request came from {peer}); start the server with --shared-memory-remote to allow it"
        )
