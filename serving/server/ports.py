"""Which of a server's ports are taken, found before it loads or builds anything.

A second `deepr serve` on a machine where one already runs would otherwise load every
model (or train the defaults) and only then fail on its first port; gRPC's own
SO_REUSEPORT would even let it share the gRPC port. Each port is bound here the way the
servers bind it (SO_REUSEADDR, no SO_REUSEPORT) and released at once.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from serving.server.settings import ServerSettings

__all__ = ["PortsInUse", "check_ports"]


@dataclass(frozen=True)
class _Port:
    what: str
    flag: str
    number: int


class PortsInUse(OSError):
    """One or more of the server's ports cannot be bound; the message names each with its flag."""


def _ports(settings: ServerSettings) -> list[_Port]:
    ports = [_Port("gRPC", "--port", settings.port)]
    if settings.http_port >= 0:
        ports.append(_Port("HTTP", "--http-port", settings.http_port))
    if settings.metrics_port >= 0:
        ports.append(_Port("metrics", "--metrics-port", settings.metrics_port))
    return [p for p in ports if p.number > 0]  # 0: the system picks a free one


def _bind_error(host: str, port: int) -> OSError | None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc
    return None


def check_ports(settings: ServerSettings) -> None:
    """Raise PortsInUse naming every port of `settings` that another process holds, or that
    two of its flags name at once."""
    ports = _ports(settings)
    flags: dict[int, list[str]] = {}
    for port in ports:
        flags.setdefault(port.number, []).append(port.flag)
    twice = {number: named for number, named in flags.items() if len(named) > 1}
    if twice:
        raise PortsInUse(
            "; ".join(f"{' and '.join(named)} are both {number}" for number, named in twice.items())
            + ": each of the server's ports needs a number of its own"
        )
    problems = []
    for port in ports:
        error = _bind_error(settings.host, port.number)
        if error is None:
            continue
        why = "is in use" if error.errno == errno.EADDRINUSE else f"cannot be bound: {error.strerror or error}"
        problems.append(f"{port.what} port {port.number} ({port.flag}) {why}")
    if problems:
        raise PortsInUse(
            f"cannot serve on {settings.host}: "
            + "; ".join(problems)
            + ". Another server may be running there: stop it, or give this one other ports with the flags named"
        )
