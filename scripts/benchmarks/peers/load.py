"""The load of scripts/benchmarks/bench_peers.py: tritonclient keeping a number of inference calls in
flight against any V2 server, and the CPU that server's processes spent meanwhile.

Clients, as users run them: over gRPC, `threads` (tritonclient.grpc, one thread and one
connection per call in flight, each waiting for its answer before the next call) and
`asyncio` (tritonclient.grpc.aio, one connection, that many tasks); over HTTP/REST,
`http-json` (the protocol's JSON as any HTTP library sends it, over aiohttp) and
`http-binary` (tritonclient.http.aio with Triton's binary tensor data). Calls run for
`warmup` seconds before a measured window of `seconds`; only calls that end inside the
window count, and the server's CPU is read at the window's two ends.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

__all__ = ["Window", "CLIENTS", "HTTP_CLIENTS", "tree_cpu_seconds", "v2_json_body"]


@dataclass
class Window:
    """What one measured window saw."""

    requests: int
    seconds: float
    rows_per_request: int
    latencies: list[float]
    server_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def items_per_second(self) -> float:
        return self.requests * self.rows_per_request / self.seconds

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 1e3 * self.server_cpu_seconds / max(self.requests, 1)

    def latency_ms(self, quantile: float) -> float:
        if len(self.latencies) < 2:
            return 1e3 * self.latencies[0] if self.latencies else float("nan")
        return 1e3 * statistics.quantiles(self.latencies, n=100, method="inclusive")[round(quantile * 100) - 1]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and every process under it (MLServer's model
    workers run in child processes)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class _Measure:
    """Marks the window and reads the server's CPU at both ends."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = self.end = float("inf")
        self.server_cpu = self.client_cpu = 0.0

    def open(self) -> None:
        self.server_cpu, self.client_cpu = -tree_cpu_seconds(self.server_pid), -time.process_time()
        self.start = time.perf_counter()

    def close(self) -> None:
        self.end = time.perf_counter()
        self.server_cpu += tree_cpu_seconds(self.server_pid)
        self.client_cpu += time.process_time()

    def window(self, calls: list[tuple[float, float]], rows: int) -> Window:
        inside = [end - begin for begin, end in calls if self.start <= end <= self.end]
        return Window(len(inside), self.end - self.start, rows, inside, self.server_cpu, self.client_cpu)


def _input(x: np.ndarray):
    """The tensor every call sends: tritonclient's InferInput `input` holding x."""
    import tritonclient.grpc as triton

    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def threads(
    url: str, model: str, x: np.ndarray, inflight: int, seconds: float, warmup: float, server_pid: int
) -> Window:
    import tritonclient.grpc as triton

    stop = threading.Event()
    calls: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def caller() -> None:
        client = triton.InferenceServerClient(url)
        tensor = _input(x)
        try:
            while not stop.is_set():
                begin = time.perf_counter()
                client.infer(model, [tensor])
                calls.append((begin, time.perf_counter()))  # list.append is atomic under the GIL
        except BaseException as error:  # the window is void: report why
            errors.append(error)
            stop.set()
        finally:
            client.close()

    workers = [threading.Thread(target=caller, daemon=True) for _ in range(inflight)]
    for worker in workers:
        worker.start()
    measure = _Measure(server_pid)
    stop.wait(warmup)
    measure.open()
    stop.wait(seconds)
    measure.close()
    stop.set()
    for worker in workers:
        worker.join(60)
    if errors:
        raise RuntimeError(f"{model} at {url}: a call failed: {errors[0]}") from errors[0]
    return measure.window(calls, x.shape[0])


async def _tasks(infer, what: str, rows: int, inflight: int, seconds: float, warmup: float, server_pid: int) -> Window:
    """`inflight` tasks each awaiting `infer()` back to back; the window after `warmup`."""
    calls: list[tuple[float, float]] = []

    async def caller() -> None:
        while True:
            begin = time.perf_counter()
            await infer()
            calls.append((begin, time.perf_counter()))

    tasks = [asyncio.create_task(caller()) for _ in range(inflight)]
    measure = _Measure(server_pid)
    done, _ = await asyncio.wait(tasks, timeout=warmup, return_when=asyncio.FIRST_EXCEPTION)
    measure.open()
    if not done:
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    measure.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise RuntimeError(f"{what}: a call failed: {task.exception()}")
    return measure.window(calls, rows)


def asyncio_tasks(
    url: str, model: str, x: np.ndarray, inflight: int, seconds: float, warmup: float, server_pid: int
) -> Window:
    import tritonclient.grpc.aio as triton_aio

    async def main() -> Window:
        tensor = _input(x)
        async with triton_aio.InferenceServerClient(url) as client:
            return await _tasks(
                lambda: client.infer(model, [tensor]),
                f"{model} at {url}",
                x.shape[0],
                inflight,
                seconds,
                warmup,
                server_pid,
            )

    return asyncio.run(main())


def v2_json_body(x: np.ndarray) -> bytes:
    """The V2 JSON request sending `x` as the tensor `input`."""
    # an id: KServe 0.21 answers 500 to a request without one (its response model wants a string)
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
    return json.dumps({"id": "1", "inputs": [tensor]}).encode()


def http_json(
    url: str, model: str, x: np.ndarray, inflight: int, seconds: float, warmup: float, server_pid: int
) -> Window:
    """The protocol's JSON form, as curl or any HTTP library sends it (Content-Type:
    application/json, tensors as `data` lists, every output answered as JSON), over aiohttp
    with that many tasks; the body is encoded once, the answers are parsed."""
    import aiohttp

    body = v2_json_body(x)

    async def main() -> Window:
        connector = aiohttp.TCPConnector(limit=inflight)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:

            async def infer() -> None:
                headers = {"Content-Type": "application/json"}
                async with session.post(f"http://{url}/v2/models/{model}/infer", data=body, headers=headers) as answer:
                    text = await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"HTTP {answer.status}: {text[:300]!r}")
                    json.loads(text)

            return await _tasks(infer, f"{model} at http://{url}", x.shape[0], inflight, seconds, warmup, server_pid)

    return asyncio.run(main())


def http_binary(
    url: str, model: str, x: np.ndarray, inflight: int, seconds: float, warmup: float, server_pid: int
) -> Window:
    """tritonclient.http.aio with Triton's binary tensor data both ways, that many tasks."""
    import tritonclient.http.aio as triton_http

    async def main() -> Window:
        tensor = triton_http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        outputs = [triton_http.InferRequestedOutput("output", binary_data=True)]
        client = triton_http.InferenceServerClient(url, conn_limit=inflight, conn_timeout=300)
        try:
            return await _tasks(
                lambda: client.infer(model, [tensor], outputs=outputs, request_id="1"),
                f"{model} at http://{url}",
                x.shape[0],
                inflight,
                seconds,
                warmup,
                server_pid,
            )
        finally:
            await client.close()

    return asyncio.run(main())


CLIENTS = {"threads": threads, "asyncio": asyncio_tasks, "http-json": http_json, "http-binary": http_binary}
HTTP_CLIENTS = ("http-json", "http-binary")
"""Clients that talk to the server's HTTP port."""
