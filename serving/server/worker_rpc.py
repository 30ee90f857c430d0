"""The private calls between a server's parent and its workers, over their Unix sockets.

They are not the V2 protocol and no client sees them: JSON objects on gRPC, one unary method
each, on services of deepr's own name. A worker answers `deepr.Worker/Status` (liveness,
statistics, queues) on its private socket; the parent answers `deepr.Supervisor/Control`
(a change to every worker, in order) and `deepr.Supervisor/State` (what a starting worker
takes over) on its own. A ServingError raised by a method reaches the caller as itself: the
same class of status and the same words.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

import grpc

from serving.protocol.errors import ServingError

__all__ = [
    "WORKER_SERVICE",
    "SUPERVISOR_SERVICE",
    "json_service",
    "call_json",
    "RemoteError",
    "CHANNEL_OPTIONS",
    "unix_address",
    "UnixChannels",
]

WORKER_SERVICE = "deepr.Worker"
SUPERVISOR_SERVICE = "deepr.Supervisor"

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # a worker restarting is back in a second or two: retry its socket that often
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

Method = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class RemoteError(ServingError):
    """A private call that failed on the other side, or could not reach it; `code` is its status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def unix_address(path: Any) -> str:
    return f"unix:{path}"


def _encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _decode(raw: bytes) -> dict[str, Any]:
    document = json.loads(raw or b"{}")
    if not isinstance(document, dict):
        raise ValueError("a private call carries a JSON object")
    return document


def json_service(service: str, methods: Mapping[str, Method]) -> grpc.GenericRpcHandler:
    """A gRPC handler for `service` whose methods take and return JSON objects."""

    def unary(method: Method) -> grpc.RpcMethodHandler:
        async def handle(request: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
            try:
                return await method(request)
            except ServingError as exc:
                await context.abort(exc.code, str(exc))
            raise AssertionError("unreachable: context.abort raises")

        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=_decode, response_serializer=_encode)

    return grpc.method_handlers_generic_handler(service, {name: unary(m) for name, m in methods.items()})


async def call_json(
    channel: grpc.aio.Channel,
    service: str,
    method: str,
    request: Mapping[str, Any],
    *,
    timeout: float,
    metadata: tuple = (),
    wait: bool = True,
) -> dict[str, Any]:
    """`service/method` with `request`; RemoteError with the other side's status and words.
    `wait`: a socket not there yet (its process starting) is waited for, within `timeout`."""
    rpc = channel.unary_unary(f"/{service}/{method}", request_serializer=_encode, response_deserializer=_decode)
    try:
        return await rpc(request, timeout=timeout, metadata=metadata, wait_for_ready=wait)
    except grpc.aio.AioRpcError as exc:
        raise RemoteError(exc.code(), exc.details() or exc.code().name) from None


class UnixChannels:
    """Channels to the private sockets of a server's processes, by index. A channel is made
    only once its socket is there, and dropped after a call fails: a channel that met its
    socket missing (its process starting again) would connect again only after a backoff,
    and meanwhile fail every call at once."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self._channels: dict[int, grpc.aio.Channel] = {}

    async def get(self, index: int, wait: float = 0.0, alive: Callable[[], bool] = lambda: True) -> grpc.aio.Channel:
        """The channel to socket `index`, waiting up to `wait` seconds for the socket while
        `alive()`; RemoteError UNAVAILABLE when it is not there."""
        path = Path(self.addresses[index].removeprefix("unix:"))
        deadline = time.monotonic() + wait
        while not path.exists():
            if time.monotonic() >= deadline or not alive():
                raise RemoteError(grpc.StatusCode.UNAVAILABLE, f"nothing listens on {path}")
            await asyncio.sleep(0.05)
        channel = self._channels.get(index)
        if channel is None:
            channel = self._channels[index] = grpc.aio.insecure_channel(self.addresses[index], options=CHANNEL_OPTIONS)
        return channel

    async def drop(self, index: int) -> None:
        channel = self._channels.pop(index, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
