"""G: the HTTP port is held to gRPC's limits (a connection cap, an idle timeout) and a time
limit for request lines and headers. H: one server per port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

from .probes import open_connections, trickle
from .test_connections_and_bursts import closed_by_server


def answered(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/v2/health/live", timeout=5) as answer:
        return answer.status == 200


def test_half_sent_requests_past_the_cap_are_refused_and_the_rest_time_out(server_process):
    server = server_process("--max-connections", "20", "--connection-idle-seconds", "30", "--header-seconds", "2")
    port = int(server.http_url.rsplit(":", 1)[1])
    connections = open_connections(port, 30, b"POST /v2/models/double/infer HTTP/1.1\r\nHost: x\r\n")
    try:
        over = connections[20:]
        assert all(closed_by_server(c, 1.0) for c in over), "connections past the cap were kept"
        started = time.monotonic()
        assert all(closed_by_server(c, 6) for c in connections[:20]), "half-sent requests were kept past 2 s"
        assert time.monotonic() - started < 6
    finally:
        for connection in connections:
            connection.close()
    assert answered(server.http_url)


def test_a_slow_sender_of_headers_is_cut_off(server_process):
    """Slowloris: one header byte every 0.4 s keeps the connection busy but never finishes
    its headers; the header limit closes it."""
    server = server_process("--header-seconds", "2")
    port = int(server.http_url.rsplit(":", 1)[1])
    connections = open_connections(port, 20, b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    open_ = trickle(connections, seconds=10, every=0.4)
    held = time.monotonic() - started
    for connection in connections:
        connection.close()
    assert not open_, f"{len(open_)} slow connections held for {held:.0f} s"
    assert held < 6
    assert answered(server.http_url)


def test_an_idle_http_connection_is_closed_after_the_idle_seconds(server_process):
    server = server_process("--connection-idle-seconds", "1")
    port = int(server.http_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_by_server(connection, 4), "a keep-alive connection outlived --connection-idle-seconds"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_second_server_on_a_taken_port_fails_at_once_naming_every_busy_port(server_process, chaos_repository):
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    ports = ["--port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    first = server_process(*ports)
    assert first.port == grpc_port
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "deepr", "serve", "--repository", str(chaos_repository), "--host", "127.0.0.1", *ports],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    seconds = time.monotonic() - started
    assert second.returncode == 1, second.stderr
    assert seconds < 10, f"failed after {seconds:.1f} s"
    for what, flag, port in [("gRPC", "--port", grpc_port), ("HTTP", "--http-port", http_port)]:
        assert f"{what} port {port} ({flag}) is in use" in second.stderr, second.stderr
    assert f"metrics port {metrics_port} (--metrics-port) is in use" in second.stderr
    assert "loaded" not in second.stderr  # no model was loaded first
    assert "Traceback" not in second.stderr
    with contextlib.suppress(Exception):
        assert first.alive()
