"""The HTTP endpoint's connection limits, the ones gRPC has of its own.

aiohttp keeps every connection it accepts for as long as the client likes until a first
request has been read: 150 connections that send half a request line, or 100 that send a
header byte every few seconds (slowloris), would each hold a socket and a handler. The
guard here sits between the listening socket and aiohttp's protocol:

- at most `max_connections` at once, counted from accept (a TLS connection still in its
  handshake counts); one more is answered 503 and closed;
- a TLS handshake must finish within `header_seconds`, and so must a request line and its
  headers from their first byte;
- a connection with no request in flight and nothing arriving is closed after
  `idle_seconds`, as gRPC's `grpc.max_connection_idle_ms` does.

A request being handled (its body read included, which the routes bound themselves) is
never cut by the guard.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

__all__ = ["ConnectionGuard", "GuardedSite"]

logger = logging.getLogger(__name__)

_DEFAULT_HANDSHAKE_SECONDS = 60.0
"""asyncio's own TLS handshake timeout, where header_seconds sets none."""

_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, the guard's clock around it."""

    def __init__(self, guard: "ConnectionGuard", inner: Any, admitted: bool) -> None:
        self.guard = guard
        self.inner = inner
        self.accepted_at = time.monotonic()
        self.transport: asyncio.BaseTransport | None = None
        self.busy = 0
        """Requests of this connection being handled."""
        self.quiet_since = time.monotonic()
        """When it last had no request in flight (its start, or its last answer)."""
        self.partial_since: float | None = None
        """When the first byte of a request not yet handed to a handler arrived."""
        self.refused = not admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.made(self)
        if self.refused:
            body = b'{"error": "too many connections: the server takes at most %d; retry later"}' % (
                self.guard.max_connections
            )
            transport.write(_FULL % (len(body), body))  # type: ignore[attr-defined]
            transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy and self.partial_since is None:
            self.partial_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    def close(self, why: str) -> None:
        logger.debug("closing an HTTP connection: %s", why)
        if self.transport is not None:
            self.transport.close()


class ConnectionGuard:
    """Wraps aiohttp's protocol factory; its middleware tells it when requests start and end."""

    def __init__(self, max_connections: int, idle_seconds: float, header_seconds: float) -> None:
        self.factory: Callable[[], Any] | None = None
        """aiohttp's protocol factory, the runner's server (set when the site starts)."""
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self.header_seconds = header_seconds
        self._open: dict[Any, _Connection] = {}
        """aiohttp's protocol of each open connection -> its guard."""
        self._handshaking: set[_Connection] = set()
        """Connections accepted whose TLS handshake has not finished: they hold a socket too."""
        self._sweeper: asyncio.Task | None = None

    def __call__(self) -> _Connection:
        """A protocol for a connection just accepted: the event loop asks for it at accept,
        before a TLS handshake, so the cap counts handshakes in progress too."""
        assert self.factory is not None, "the guard serves connections once its site has started"
        admitted = not self.max_connections or self.open_connections < self.max_connections
        connection = _Connection(self, self.factory(), admitted)
        if admitted:
            self._handshaking.add(connection)
        return connection

    def made(self, connection: _Connection) -> None:
        """The connection's transport is up (its handshake done)."""
        if connection in self._handshaking:
            self._handshaking.discard(connection)
            self._open[connection.inner] = connection

    def forget(self, connection: _Connection) -> None:
        self._handshaking.discard(connection)
        if self._open.get(connection.inner) is connection:
            del self._open[connection.inner]

    @property
    def open_connections(self) -> int:
        return len(self._open) + len(self._handshaking)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        connection = self._open.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.busy += 1
        connection.partial_since = None
        try:
            return await handler(request)
        finally:
            connection.busy -= 1
            connection.quiet_since = time.monotonic()

    def start(self) -> None:
        if self.idle_seconds or self.header_seconds or self.max_connections:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        limits = [s for s in (self.idle_seconds, self.header_seconds) if s]
        period = min([1.0, *(s / 4 for s in limits)])
        # A failed handshake never reaches the protocol (no connection_made, no
        # connection_lost): its count is dropped once the loop has surely given up on it.
        handshake_seconds = (self.header_seconds or _DEFAULT_HANDSHAKE_SECONDS) + 0.5
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in [c for c in self._handshaking if now - c.accepted_at > handshake_seconds]:
                self._handshaking.discard(connection)
            for connection in list(self._open.values()):
                if connection.busy:
                    continue
                if connection.partial_since is not None:
                    if self.header_seconds and now - connection.partial_since > self.header_seconds:
                        connection.close(f"its request line and headers took over {self.header_seconds:g} s")
                elif self.idle_seconds and now - connection.quiet_since > self.idle_seconds:
                    connection.close(f"idle for {self.idle_seconds:g} s")


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every accepted connection going through `guard`; on a
    listening socket of its own, or on `sock`, one bound already (a worker's, bound once
    by its parent for every worker)."""

    def __init__(
        self,
        runner: web.AppRunner,
        guard: ConnectionGuard,
        *args: Any,
        sock: socket.socket | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self.guard = guard
        self.sock = sock

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self.guard.factory = self._runner.server
        handshake = (self.guard.header_seconds or None) if self._ssl_context else None
        where: dict[str, Any] = (
            {"sock": self.sock}
            if self.sock is not None
            else {
                "host": self._host,
                "port": self._port,
                "reuse_address": self._reuse_address,
                "reuse_port": self._reuse_port,
            }
        )
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, ssl=self._ssl_context, ssl_handshake_timeout=handshake, backlog=self._backlog, **where
        )
        self.guard.start()

    async def stop(self) -> None:
        self.guard.stop()
        await super().stop()
