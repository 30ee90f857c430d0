"""TLS from the server's settings: the files checked before anything binds, and the context of
its HTTP ports (REST and metrics): the certificate chain and key, and with a client CA,
client certificates required (mutual TLS), as on the gRPC port."""

from __future__ import annotations

import logging
import ssl
import time

from serving.server.settings import ServerSettings

__all__ = ["server_ssl_context", "check_tls_files"]

logger = logging.getLogger(__name__)


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


def check_tls_files(settings: ServerSettings, *, warn: bool = True) -> None:
    """Before anything binds: ValueError naming the flag and file when the certificate, key
    or client CA cannot be used (a key that is not the certificate's says so, where the gRPC
    library would only fail to bind); with `warn`, a warning when the certificate is outside
    its validity, which every client would refuse."""
    if not settings.tls_cert:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(
                f"--tls-key {settings.tls_key} is not the key of --tls-cert {settings.tls_cert}: give the private key "
                "the certificate was issued for"
            ) from None
        raise ValueError(
            f"--tls-cert {settings.tls_cert} with --tls-key {settings.tls_key} cannot be used: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ValueError(
            f"--tls-cert {settings.tls_cert} / --tls-key {settings.tls_key}: {exc.strerror or exc}"
        ) from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(settings.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"--tls-client-ca {settings.tls_client_ca} cannot be read as PEM: {exc}") from None
    if warn:
        _warn_outside_validity(settings.tls_cert)


def _warn_outside_validity(path: str) -> None:
    try:
        # The standard library's own decoder of a PEM certificate (what its tests use); no
        # public API gives the dates of a file without a third-party package.
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except (AttributeError, KeyError, ValueError, ssl.SSLError):
        return
    now = time.time()
    if now > not_after:
        logger.warning(
            "the server certificate %s expired on %s: clients that check it (all, by default) will refuse the server",
            path,
            decoded["notAfter"],
        )
    elif now < not_before:
        logger.warning("the server certificate %s is not valid before %s", path, decoded["notBefore"])
