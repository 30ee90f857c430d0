"""Errors the serving layers raise; each carries the gRPC status it maps to."""

from __future__ import annotations

import grpc

__all__ = [
    "ServingError",
    "ModelNotFound",
    "ModelNotReady",
    "InvalidInput",
    "ModelLoadError",
    "QueueFull",
    "DeadlineExceeded",
    "NotEnabled",
    "AlreadyExists",
    "NotFound",
    "PermissionDenied",
    "Overloaded",
    "ModelOutputError",
]


class ServingError(Exception):
    """Base class: `code` is the gRPC status a client receives with the message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ModelNotFound(ServingError):
    """No such model, or no such version of it."""

    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServingError):
    """The model exists but cannot serve now (failed to load, unloaded)."""

    code = grpc.StatusCode.UNAVAILABLE


class InvalidInput(ServingError):
    """The request does not match the model: names, shapes, datatypes or sizes."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelLoadError(ServingError):
    """A model in the repository cannot be loaded (bad config, bad ONNX file)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class QueueFull(ServingError):
    """The model's request queue is at its bound (dynamic_batching max_queue_size)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The client's deadline passed before the request could run."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotEnabled(ServingError):
    """The request needs a feature this server was started without."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(ServingError):
    """A name the request would create is taken (a shared memory region)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(ServingError):
    """The request names something that is not there (a shared memory region)."""

    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(ServingError):
    """The caller may not do this from where it is (shared memory from another host)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(ServingError):
    """The server holds as many inference requests as it was told to (max_inflight)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelOutputError(ServingError):
    """A model's output does not have the shape its config and the run promise: a first
    dimension other than the rows that ran, or dims other than the config's. No rows of such a
    run are handed out, since whose rows they are cannot be told (Triton fails it alike)."""

    code = grpc.StatusCode.INTERNAL
