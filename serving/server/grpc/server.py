"""The asyncio gRPC server: inference service + grpc.health.v1, graceful stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.server.dataplane import DataPlane
from serving.server.grpc.auth import BearerTokenInterceptor, server_credentials
from serving.server.grpc.decoding import service_handler
from serving.server.grpc.servicer import InferenceServicer
from serving.server.memory import trim_when_idle
from serving.server.peers import LocalServer, Peers, worker_status
from serving.server.polling import fingerprints, poll_repository
from serving.server.ports import check_ports
from serving.server.repository import ModelRepository
from serving.server.settings import ServerSettings
from serving.server.tls import check_tls_files
from serving.server.worker_process import PARENT_GONE, leave_sockets, parent_hung_up
from serving.server.worker_rpc import CHANNEL_OPTIONS, WORKER_SERVICE, json_service

if TYPE_CHECKING:
    from serving.server.http.app import HttpEndpoint
    from serving.server.metrics_http import MetricsServer

__all__ = ["InferenceServer", "SERVICE_NAME", "serve_in_thread"]

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _channel_options(settings: ServerSettings) -> list[tuple[str, int | str]]:
    worker = settings.worker_index >= 0
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Each connection's first read buffer is this size, and grows while reads fill it.
        # Starting at 4 MiB cost 270 KB of memory per idle connection; 64 KiB costs 16 KB, as
        # grpc's own 8 KiB does, and large messages went as fast with any of the three when
        # measured side by side (scripts/benchmarks/connection_cost.py, docs/benchmarks.md).
        ("grpc.experimental.tcp_read_chunk_size", 64 << 10),
        ("grpc.experimental.tcp_max_read_chunk_size", 16 << 20),
        # grpc sets SO_REUSEPORT by default, so a second server given the same port would bind
        # it too and the kernel would split the clients between the two without a word; the
        # workers of one server share their port on purpose.
        ("grpc.so_reuseport", 1 if worker else 0),
    ]
    if settings.max_connections:
        options.append(("grpc.max_allowed_incoming_connections", settings.max_connections))
    # Calls that grpc has accepted but Python has not yet picked up are cancelled without a
    # word beyond grpc's own limits (1,000 at random, all past 3,000): a burst on one
    # channel lost a fifth to half of its calls that way. Lifted far above max_inflight,
    # so that deepr refuses the excess itself, with RESOURCE_EXHAUSTED and a reason.
    pending = max(4 * settings.max_inflight, 1 << 14)
    options += [("grpc.server.max_pending_requests", pending), ("grpc.server.max_pending_requests_hard_limit", pending)]
    if settings.connection_idle_seconds:
        options.append(("grpc.max_connection_idle_ms", int(settings.connection_idle_seconds * 1000)))
    if settings.header_seconds:
        # A connection that has not finished its handshake (TLS, and HTTP/2's preface and
        # settings) counts against max_allowed_incoming_connections; grpc's default gives it
        # 120 s, so a few dozen silent sockets locked every client out for a minute or two.
        options.append(("grpc.server_handshake_timeout_ms", int(settings.header_seconds * 1000)))
    # grpc takes the first of two equal keys: the operator's options replace deepr's.
    return list({**dict(options), **dict(settings.extra_grpc_options())}.items())


def _quiet_when_clients_leave(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Event loop exception handler. When a client cancels a call just as its answer is
    being sent, grpc's send fails (ExecuteBatchError) before grpc marks the call as closed
    by the client, and the error escapes as an unretrieved task exception: a traceback
    in the log for nothing the server did wrong. That one is a debug line; the rest go to
    asyncio's default handler."""
    if isinstance(context.get("exception"), cygrpc.ExecuteBatchError):
        logger.debug("a client left while its answer was being sent: %s", context["exception"])
        return
    loop.default_exception_handler(context)


class InferenceServer:
    """Serves a model repository over gRPC.

        server = InferenceServer(ServerSettings(repository="models", port=8001))
        await server.serve_forever()        # until SIGTERM / SIGINT

    or `await server.start()` / `await server.stop()` to embed it.
    """

    def __init__(self, settings: ServerSettings, dataplane: DataPlane | None = None) -> None:
        self.settings = settings
        self.dataplane = dataplane or DataPlane(
            ModelRepository(settings.repository, settings.runtime(), settings.completion(), settings.model_name),
            settings,
        )
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self._trimmer: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        self._http: HttpEndpoint | None = None
        self._private: grpc.aio.Server | None = None
        """A worker's private socket, for its parent and siblings."""
        self.whole: LocalServer | Peers = LocalServer(self.dataplane)
        """Who answers the calls about the whole server: this process, or every worker."""
        self.port = 0
        self.http_port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        """Load the repository, bind, start serving; returns the bound port. A worker of a
        server of several first opens its private socket and takes the server's state from
        its parent, then binds the public ports: no client reaches it before it caught up."""
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_when_clients_leave)
        settings = self.settings
        worker = settings.worker_index >= 0
        if not worker:  # the workers of a server share ports and files their parent has checked
            check_tls_files(settings)
            check_ports(settings)  # before any model loads: a taken port fails in a moment, naming each
        # Taken before the models load, so the poller sees what changes from then on, even a
        # copy made while the server was still starting (the tests' own race, under load).
        known = await asyncio.to_thread(fingerprints, self.dataplane.repository) if settings.poll_seconds else None
        await loop.run_in_executor(None, self.dataplane.start)
        if worker:
            self.whole = await self._join_the_workers()
        server = self._public_server()
        if self.settings.metrics_port >= 0:
            from serving.server.metrics import StatisticsCollector
            from serving.server.metrics_http import start_metrics_server

            metrics = start_metrics_server(
                [StatisticsCollector.of(self.dataplane.statistics, self.dataplane.pending)], settings
            )
            self.metrics_port = metrics.server_port
            self._metrics = metrics
        if settings.http_port >= 0:
            from serving.server.http.app import HttpEndpoint

            self._http = HttpEndpoint(self.dataplane, settings, self.whole)
            self.http_port = await self._http.start()
        await server.start()
        self._server = server
        if settings.trim_idle_seconds:
            self._trimmer = loop.create_task(trim_when_idle(self.dataplane, settings.trim_idle_seconds))
        if settings.poll_seconds:
            self._poller = loop.create_task(poll_repository(self.dataplane, settings.poll_seconds, known=known))
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._log_started()
        return self.port

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [BearerTokenInterceptor(self.settings.token)] if self.settings.token else []

    def _public_server(self) -> grpc.aio.Server:
        """The gRPC server clients reach: the inference service and grpc.health.v1, bound."""
        settings = self.settings
        server = grpc.aio.server(options=_channel_options(settings), interceptors=self._interceptors())
        server.add_generic_rpc_handlers((service_handler(InferenceServicer(self.dataplane, self.whole), _SERVICE),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls_cert:
                credentials = server_credentials(
                    Path(settings.tls_cert),
                    Path(settings.tls_key),
                    Path(settings.tls_client_ca) if settings.tls_client_ca else None,
                )
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        return server

    async def _join_the_workers(self) -> Peers:
        """Take over the server's state from the parent, then serve this worker's private
        socket (the V2 service answered by this worker alone, and its status for the parent).
        A change the parent sends meanwhile waits for the socket; its status is only ever
        asked of a worker that holds its predecessor's statistics."""
        settings = self.settings
        sockets = settings.worker_sockets.split(",")
        peers = Peers(self.dataplane, settings.worker_index, sockets, settings.worker_supervisor, settings.token)
        await peers.catch_up()
        private = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=self._interceptors())

        async def status(request: dict) -> dict:
            return worker_status(self.dataplane)

        private.add_generic_rpc_handlers(
            (
                service_handler(
                    InferenceServicer(self.dataplane, LocalServer(self.dataplane, lambda: self._server is not None)),
                    _SERVICE,
                ),
                json_service(WORKER_SERVICE, {"Status": status}),
            )
        )
        private.add_insecure_port(sockets[settings.worker_index])
        await private.start()
        self._private = private
        return peers

    def _log_started(self) -> None:
        settings = self.settings
        logger.info(
            "serving %s on %s:%d (%s%s)",
            settings.repository,
            settings.host,
            self.port,
            "TLS" + (" with client certificates" if settings.tls_client_ca else "")
            if settings.tls_cert
            else "plaintext",
            ", bearer token required" if settings.token else "",
        )
        if self._http is not None:
            scheme = "https" if settings.tls_cert else "http"
            logger.info(
                "HTTP/REST on %s:%d; the zoo page: %s://%s:%d/",
                settings.host,
                self.http_port,
                scheme,
                "localhost" if settings.host in ("0.0.0.0", "::") else settings.host,
                self.http_port,
            )

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, release models."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds if grace is None else grace
        if self._http is not None:
            http, self._http = self._http, None
            await asyncio.gather(self._server.stop(grace), http.stop())
        else:
            await self._server.stop(grace)
        self._server = None
        if self._private is not None:
            private, self._private = self._private, None
            await private.stop(0)
            leave_sockets(self.settings)
        await self.whole.close()
        for task in (self._trimmer, self._poller):
            if task is not None:
                task.cancel()
        self._trimmer = self._poller = None
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        await self.dataplane.close()
        logger.info("server stopped")

    async def serve_forever(self, after_start: Callable[["InferenceServer"], None] | None = None) -> None:
        """Serve until SIGTERM / SIGINT; `after_start(self)` runs once the port is bound (to
        start work that adds models while the server answers)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.settings.worker_index >= 0:

            def orphaned() -> None:
                logger.warning("the parent is gone: draining")
                parent_hung_up()
                stop.set()

            loop.add_signal_handler(PARENT_GONE, orphaned)
        await self.start()
        if after_start is not None:
            after_start(self)
        await stop.wait()
        logger.info("signal received: draining in-flight requests")
        await self.stop()


async def _cancel_the_rest() -> None:
    """Cancel and await what still runs on the loop (an HTTP connection's handler, say), as
    asyncio.run does before it closes a loop, so no task is destroyed while pending."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def serve_in_thread(settings: ServerSettings) -> Iterator[InferenceServer]:
    """Run a server on its own event loop in a background thread, for apps and tests.

    with serve_in_thread(ServerSettings(repository=repo, port=0)) as server:
        client = InferenceClient(f"localhost:{server.port}")
    """
    server = InferenceServer(settings)
    loop = settings.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="deepr-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result()
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0), loop).result()
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
