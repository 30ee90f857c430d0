"""Access control for the gRPC server: TLS credentials and a bearer-token check.

The token check covers every RPC of the inference service but the server's health:
grpc.health.v1 and the V2 ServerLive and ServerReady calls stay open, because
orchestrators' probes (Kubernetes, load balancers) cannot present a token, and they reveal
only whether the server is serving. HTTP follows the same rule: /v2/health/live and
/v2/health/ready are open, everything else asks for the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from serving.server.bearer import bearer_token_matches

__all__ = ["BearerTokenInterceptor", "server_credentials", "OPEN_SERVICES"]

OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
"""Method paths (or their prefixes) answered without the token."""


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` metadata (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        presented = next((value for key, value in details.invocation_metadata or () if key == "authorization"), None)
        if bearer_token_matches(presented, self._token):
            return handler
        message = (
            "missing bearer token (metadata 'authorization: Bearer <token>')"
            if presented is None
            else "invalid bearer token"
        )
        return _refusal(handler, message)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # an async generator, as streaming handlers are

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **serializers)
    return grpc.stream_stream_rpc_method_handler(streaming, **serializers)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with `client_ca`, clients must
    present a certificate signed by it (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS private key"), _read(cert, "TLS certificate"))],
        root_certificates=_read(client_ca, "client CA certificate") if client_ca else None,
        require_client_auth=client_ca is not None,
    )
