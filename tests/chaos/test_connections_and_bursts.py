"""Connections that never call, connections past the limit, and bursts of calls on one
channel: each is answered or closed, and costs the server little."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .probes import WIDE, idle_connections, wait_until


def closed_by_server(connection: socket.socket, timeout: float) -> bool:
    """Whether the server closes `connection` within `timeout` (reading whatever it sent first)."""
    connection.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if connection.recv(65536) == b"":
                return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True
    return False


def test_an_idle_connection_costs_little(server_process):
    server = server_process("--max-connections", "0")
    time.sleep(1)
    before = server.rss_bytes()
    with idle_connections(server.port, 500) as connections:
        time.sleep(2)
        per_connection = (server.rss_bytes() - before) / len(connections)
    assert server.alive()
    assert per_connection < 40 * 1024, f"{per_connection / 1024:.0f} KB per idle connection"


def test_connections_past_the_limit_are_closed_and_idle_ones_time_out(server_process):
    server = server_process("--max-connections", "20", "--connection-idle-seconds", "1")
    with idle_connections(server.port, 30) as connections:
        refused = [closed_by_server(c, 0.5) for c in connections[20:]]
        assert all(refused), f"{refused.count(False)} of 10 connections past the limit were kept"
        assert all(closed_by_server(c, 5) for c in connections[:20]), "idle connections were kept past the idle timeout"
    client = triton.InferenceServerClient(server.url)
    x = np.ones((1, 4), np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("double", [tensor]).as_numpy("y"), 2 * x)


async def burst(
    url: str, model: str, calls: int, x: np.ndarray | None = None, timeout: float = 120
) -> collections.Counter:
    """`calls` concurrent ModelInfer calls of `x` (default one row of 4) on one channel:
    their status codes and messages."""
    x = np.ones((1, 4), np.float32) if x is None else x
    async with grpc.aio.insecure_channel(url, options=[("grpc.max_receive_message_length", -1)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())

        async def call() -> tuple[str, str]:
            try:
                await stub.ModelInfer(request, timeout=timeout)
                return "OK", ""
            except grpc.aio.AioRpcError as error:
                return error.code().name, error.details()

        return collections.Counter(await asyncio.gather(*(call() for _ in range(calls))))


def failures_metric(server, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    match = re.search(rf'nv_inference_request_failure\{{model="{model}",version="1"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_a_burst_on_one_channel_is_answered(server_process):
    server = server_process()
    outcome = asyncio.run(burst(server.url, "double", 10_000))
    codes = collections.Counter(code for code, _ in outcome.elements())
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] > 0 and server.alive()


def test_overload_is_refused_with_a_reason_logged_once_and_counted(server_process):
    server = server_process("--max-inflight", "50")
    outcome = asyncio.run(burst(server.url, "delayed", 2_000))
    codes = collections.Counter(code for code, _ in outcome.elements())
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    messages = {message for code, message in outcome if code == "RESOURCE_EXHAUSTED"}
    assert all("--max-inflight 50" in m and "model 'delayed'" in m for m in messages), messages
    assert wait_until(lambda: failures_metric(server, "delayed") == codes["RESOURCE_EXHAUSTED"], 5)
    assert 1 <= server.log_text().count("overloaded: refused") <= 2  # once per 10 s interval, not per request
    assert "Traceback" not in server.log_text()


def test_memory_goes_back_after_bursts(server_process):
    """Bursts of 0.8 MB requests whose clients give up on a short deadline: glibc kept
    0.7-1.6 GB after each round until the server trimmed it once idle."""
    server = server_process()
    for round_ in range(3):
        # from a process of its own, as an outside client: not one that holds the test session's
        # imports and threads
        codes = burst_from_another_process(server.url, "wide", 1000, rows=16, width=WIDE, timeout=2)
        assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
        # the server trims 2 s after it has finished what the burst left it
        seen: list[int] = []
        assert wait_until(lambda: seen.append(server.rss_bytes() >> 20) or seen[-1] < 300, 15, interval=0.5), (
            f"round {round_} ({codes}): resident MB every 0.5 s after the burst: {seen}; "
            f"server log: {server.log_text()[-2000:]}"
        )


def burst_from_another_process(url: str, model: str, calls: int, *, rows: int, width: int, timeout: float) -> dict:
    """burst() run by a fresh Python: each status code and how many calls got it."""
    script = (
        "import asyncio, collections, json, sys, numpy as np\n"
        "from tests.chaos.test_connections_and_bursts import burst\n"
        f"x = np.ones(({rows}, {width}), np.float32)\n"
        f"outcome = asyncio.run(burst({url!r}, {model!r}, {calls}, x, timeout={timeout}))\n"
        "print(json.dumps(collections.Counter(code for code, _ in outcome.elements())))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)
