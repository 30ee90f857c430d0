"""The metrics port: /metrics over HTTP or HTTPS, held to the limits of the server's other ports.

The page names every model, so it is guarded like the inference service: with a bearer
token, scrapes present it too (Prometheus: `authorization: credentials_file`); with TLS, the
port speaks HTTPS, and with a client CA it asks scrapers for a certificate (mutual TLS).

Each connection gets a thread of its own (scrapes are few) and its TLS handshake happens in
that thread, never in the accepting one, so a client that connects and says nothing holds
only its own thread. A connection has `header_seconds` per read and at most
`METRICS_CONNECTION_SECONDS` in all; at most `METRICS_MAX_CONNECTIONS` are open at once
(fewer where --max-connections says so), and more are closed on accept.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any, Callable, Iterable, Sequence
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

from serving.server.bearer import bearer_token_matches
from serving.server.settings import ServerSettings
from serving.server.tls import server_ssl_context

__all__ = ["MetricsServer", "start_metrics_server", "METRICS_MAX_CONNECTIONS", "METRICS_CONNECTION_SECONDS"]

logger = logging.getLogger(__name__)

METRICS_MAX_CONNECTIONS = 64
"""Open connections to the metrics port at most: scrapers are a handful."""
METRICS_CONNECTION_SECONDS = 30.0
"""A connection's whole life at most: a scrape is one request and its answer."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass


class MetricsServer(ThreadingWSGIServer):
    """prometheus_client's threading WSGI server, with TLS per connection, a connection cap
    and time limits."""

    tls: ssl.SSLContext | None = None
    max_connections = METRICS_MAX_CONNECTIONS
    read_seconds: float | None = 10.0
    """Each read of a connection (its handshake's included); None: no limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def open_connections(self) -> int:
        return self._open

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection while there is room; one more is closed at once."""
        with self._open_lock:
            if self.max_connections and self._open >= self.max_connections:
                logger.debug("metrics: %d connections open, closing one more from %s", self._open, client_address)
                return False
            self._open += 1
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # `request` is the accepted socket (a TCP server's). A deadline for the whole connection: a client sending a byte now and then would
        # otherwise pass every per-read timeout.
        deadline = threading.Timer(METRICS_CONNECTION_SECONDS, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            request.settimeout(self.read_seconds)
            if self.tls is not None:
                request = self.tls.wrap_socket(request, server_side=True)  # the handshake, in this thread
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError) as exc:  # timeouts, refused handshakes, clients gone
            logger.debug("metrics: a connection from %s ended: %s", client_address, exc)
        except Exception:  # a bug in a collector: logged, the port goes on
            self.handle_error(request, client_address)
        finally:
            deadline.cancel()
            self.shutdown_request(request)
            with self._open_lock:
                self._open -= 1


def _cut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _requiring_bearer(app: Callable, token: str) -> Callable:
    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if bearer_token_matches(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="deepr"')]
        )
        return [b"missing or invalid bearer token (header 'Authorization: Bearer <token>')\n"]

    return guarded


def start_metrics_server(collectors: Sequence[Any], settings: ServerSettings, port: int | None = None) -> MetricsServer:
    """Serve /metrics from `collectors` in a background thread on `settings`' host and
    metrics port (or `port`), with its token, TLS and limits; returns the server (its
    server_port, shutdown())."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    app = make_wsgi_app(registry)
    if settings.token:
        app = _requiring_bearer(app, settings.token)
    host = settings.host
    port = settings.metrics_port if port is None else port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    limits = {
        "address_family": family,
        "tls": server_ssl_context(settings),
        "max_connections": min(filter(None, (settings.max_connections, METRICS_MAX_CONNECTIONS))),
        "read_seconds": settings.header_seconds or None,
    }
    server_class = type("DeeprMetricsServer", (MetricsServer,), limits)
    try:
        server: MetricsServer = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    threading.Thread(target=server.serve_forever, name="deepr-metrics", daemon=True).start()
    logger.info(
        "metrics on %s://%s:%d/metrics%s",
        "https" if server.tls else "http",
        host,
        server.server_port,
        " (bearer token required)" if settings.token else "",
    )
    return server
