"""Requests whose bytes are not the protobuf message they should be get INVALID_ARGUMENT
with the parser's reason, instead of grpc's generic UNKNOWN."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

__all__ = ["DecodeErrorInterceptor"]


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return decode


def _refuse(reason: str) -> tuple[grpc.StatusCode, str]:
    return grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid protobuf message: {reason}"


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        serializers = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            behaviour = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await context.abort(*_refuse(request.reason))
                return await behaviour(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **serializers)
        if handler.stream_stream:
            streaming = handler.stream_stream

            async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, _Undecodable):
                        await context.abort(*_refuse(request.reason))
                    yield request

            async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for response in streaming(checked(requests, context), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream, **serializers)
        return handler  # deepr's services have no other kinds
