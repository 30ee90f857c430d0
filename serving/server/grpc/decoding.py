"""The gRPC method handlers of a service, built once at start.

Requests whose bytes are not the protobuf message they should be get INVALID_ARGUMENT
with the parser's reason, instead of grpc's generic UNKNOWN: each method's deserializer
hands the servicer an Undecodable, which its methods refuse. This costs nothing per call
beyond the deserializer itself (a server interceptor doing the same ran a coroutine and
built a handler for every call: 29 us of a 0.6 ms request under load)."""

from __future__ import annotations

from typing import Any, Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

__all__ = ["Undecodable", "service_handler", "refusal"]


class Undecodable:
    """What a method receives in place of a request whose bytes did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def refusal(request: Undecodable) -> str:
    return f"the request is not a valid protobuf message: {request.reason}"


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return decode


def service_handler(servicer: Any, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """`servicer`'s methods for every RPC of `service` (unary or bidirectional streaming;
    deepr's services have no other kinds), with tolerant request parsing."""
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        codec = {
            "request_deserializer": _tolerant(request.FromString),
            "response_serializer": response.SerializeToString,
        }
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, **codec)
        elif not (method.client_streaming or method.server_streaming):
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **codec)
        else:
            raise TypeError(f"{service.full_name}/{method.name}: only unary and bidirectional streaming are served")
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
