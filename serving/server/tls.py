"""The TLS context of the server's HTTP ports (REST and metrics), from its settings: the
certificate chain and key, and with a client CA, client certificates required (mutual TLS),
as on the gRPC port."""

from __future__ import annotations

import ssl

from serving.server.settings import ServerSettings

__all__ = ["server_ssl_context"]


def server_ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """None for a plaintext server."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
