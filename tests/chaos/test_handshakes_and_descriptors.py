"""Connections that open and say nothing: each port holds them to --header-seconds, counts
them against its cap from accept, and never lets one block another; the server raises its
own open-files limit so that its caps, not the kernel, decide who is refused."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import tritonclient.grpc as triton

from .probes import wait_until


@contextlib.contextmanager
def silent(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections that send nothing; closed on exit."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5)) for _ in range(count)]


def closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(0.01)
    try:
        return connection.recv(1 << 16) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:  # reset
        return True


def scrape(url: str, context: ssl.SSLContext | None = None, timeout: float = 3) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def tls_flags(pki: dict[str, Path], mutual: bool = False) -> list[str]:
    flags = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]
    return flags + (["--tls-client-ca", str(pki["ca"])] if mutual else [])


def test_a_silent_connection_does_not_hold_up_https_metrics(server_process, pki):
    server = server_process(*tls_flags(pki))
    context = ssl.create_default_context(cafile=pki["ca"])
    url = f"https://127.0.0.1:{server.metrics_port}/metrics"
    with silent(server.metrics_port, 1):
        started = time.monotonic()
        assert scrape(url, context) == 200
        assert time.monotonic() - started < 2


def test_metrics_ask_for_a_client_certificate_under_mutual_tls(server_process, pki):
    server = server_process(*tls_flags(pki, mutual=True))
    url = f"https://127.0.0.1:{server.metrics_port}/metrics"
    anonymous = ssl.create_default_context(cafile=pki["ca"])
    with pytest.raises((ssl.SSLError, OSError)):  # urllib.error.URLError is an OSError
        scrape(url, anonymous)
    certified = ssl.create_default_context(cafile=pki["ca"])
    certified.load_cert_chain(pki["client_cert"], pki["client_key"])
    assert scrape(url, certified) == 200


def test_the_metrics_port_caps_its_connections_and_times_out_silent_ones(server_process):
    from serving.server.metrics_http import METRICS_MAX_CONNECTIONS

    server = server_process("--header-seconds", "1")
    with silent(server.metrics_port, METRICS_MAX_CONNECTIONS + 6) as connections:
        time.sleep(0.5)
        assert sum(closed_by_server(c) for c in connections) >= 6  # past the cap: closed on accept
        assert wait_until(lambda: all(closed_by_server(c) for c in connections), 5)  # the rest: after a second
        assert scrape(f"http://127.0.0.1:{server.metrics_port}/metrics") == 200


def test_tls_handshakes_count_against_the_http_cap_and_end_after_the_header_seconds(server_process, pki):
    server = server_process(*tls_flags(pki), "--max-connections", "4", "--header-seconds", "1")
    context = ssl.create_default_context(cafile=pki["ca"])
    ready = server.http_url.replace("http:", "https:") + "/v2/health/live"
    assert scrape(ready, context) == 200
    with silent(server.http_port, 4) as connections:
        time.sleep(0.2)
        assert scrape(ready, context) == 503  # four handshakes under way fill a cap of four
        assert wait_until(lambda: all(closed_by_server(c) for c in connections), 5)
        assert wait_until(lambda: scrape(ready, context) == 200, 5)  # their places back


def test_silent_grpc_connections_give_their_places_back_after_the_header_seconds(server_process):
    server = server_process("--max-connections", "5", "--header-seconds", "1")
    with silent(server.port, 8):
        time.sleep(2.5)
        client = triton.InferenceServerClient(server.url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        started = time.monotonic()
        assert client.is_server_live(client_timeout=5)
        assert time.monotonic() - started < 2
        client.close()


def open_files_limit(pid: int) -> tuple[int, int]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
    return int(soft), int(hard)


def test_the_server_raises_its_open_files_limit_and_fits_its_caps_under_it(server_process):
    server = server_process("--max-connections", "100000000")
    soft, hard = open_files_limit(server.proc.pid)
    assert soft == hard
    assert re.search(r"--max-connections 100000000 cannot hold: this process may open \d+ files", server.log_text())


def test_a_server_started_with_a_low_soft_limit_raises_it(chaos_repository):
    from .probes import ServerProcess

    server = ServerProcess(chaos_repository, open_files=256)
    try:
        soft, hard = open_files_limit(server.proc.pid)
        assert soft == hard > 256
        assert "cannot hold" not in server.log_text() or hard < 2 * 1024 + 256
    finally:
        server.stop()


def test_a_key_that_is_not_the_certificates_is_named_before_anything_loads(chaos_repository, pki, tmp_path):
    import subprocess
    import sys

    import trustme

    other = tmp_path / "other.key"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(other)
    done = subprocess.run(
        [sys.executable, "-m", "deepr", "serve", "--repository", str(chaos_repository), "--port", "0"]
        + ["--tls-cert", str(pki["cert"]), "--tls-key", str(other)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"--tls-key {other} is not the key of --tls-cert {pki['cert']}" in done.stderr
    assert "Traceback" not in done.stderr and "loaded" not in done.stderr


def test_an_expired_server_certificate_is_warned_of(server_process, tmp_path):
    import datetime

    import trustme

    expired = trustme.CA().issue_cert("127.0.0.1", not_after=datetime.datetime(2020, 1, 1))
    cert, key = tmp_path / "expired.pem", tmp_path / "expired.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in expired.cert_chain_pems))
    expired.private_key_pem.write_to_path(key)
    server = server_process("--tls-cert", str(cert), "--tls-key", str(key))
    assert f"the server certificate {cert} expired on Jan  1 00:00:00 2020 GMT" in server.log_text()
