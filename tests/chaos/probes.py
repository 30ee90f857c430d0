"""A server in a child process, tiny models and idle connections for the probes in this folder.

The models are one-node graphs (y = 2x) built here, so nothing is trained: what is under
test is the server, not a model."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterator

import onnx
from onnx import TensorProto, helper

from exporters.repository import add_to_repository, serving_config
from serving.protocol.generated import model_config_pb2 as mc

WIDE = 3 * 64 * 64
"""Row width of the `wide` model: 48 KiB per row, so a 256-row request is 12 MiB."""


def doubling_graph(path: Path, width: int) -> Path:
    """y = 2x over (batch, width) float32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def add_doubling_model(
    repository: Path, name: str, *, width: int = 4, queue_delay_us: int = 0, max_batch_size: int = 256
) -> None:
    config = serving_config(name, max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    add_to_repository(repository, config, doubling_graph(repository.parent / f"{name}.onnx", width))


def add_strings_model(repository: Path, name: str, *, batched: bool = True) -> None:
    """y = x over BYTES: (batch, 1) with batches of up to 256, or a free (n,) unbatched."""
    shape = ["batch", 1] if batched else ["n"]
    x = helper.make_tensor_value_info("x", TensorProto.STRING, shape)
    y = helper.make_tensor_value_info("y", TensorProto.STRING, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y])
    path = repository.parent / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    add_to_repository(repository, serving_config(name, 256 if batched else 0), path)


PICTURE_SIZE = 28


def add_pictures_model(repository: Path, name: str, *, max_batch_size: int = 256) -> None:
    """A model that takes picture files, as `deepr export --pixels encoded` writes them: the
    server decodes each to 28x28 grey pixels; the graph answers their mean, (batch, 1)."""
    from exporters.pixels import as_encoded_config
    from serving.protocol.preprocessing import ImagePreprocessing
    from serving.protocol.schema import PREPROCESSING_KEY

    side = PICTURE_SIZE
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", side, side, 1])
    mean = helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["pixels", "flat"], ["rows"]),
        helper.make_node("ReduceMean", ["rows"], ["mean"], axes=[1], keepdims=1),
    ]
    flat = helper.make_tensor("flat", TensorProto.INT64, [2], [0, -1])
    graph = helper.make_graph(nodes, name, [images], [mean], [flat])
    path = repository.parent / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    config = serving_config(name, max_batch_size)
    config.input.add(name="images")  # its type and dims: as_encoded_config's
    preprocessing = ImagePreprocessing(size=(side, side), color_mode="L", pixels="encoded", layout="NHWC")
    as_encoded_config(config, preprocessing, PREPROCESSING_KEY)
    config.output.add(name="mean", data_type=mc.TYPE_FP32, dims=[1])
    add_to_repository(repository, config, path)


class ServerProcess:
    """`deepr serve` in a child process, so that a probe which kills it cannot kill the tests."""

    def __init__(
        self,
        repository: Path,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        open_files: int | None = None,
    ) -> None:
        """`cwd`: the deepr checkout to run (`python -m deepr` imports from there);
        `open_files`: the soft limit on open files it starts with."""
        self.log: deque[str] = deque(maxlen=2000)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepr",
                "serve",
                "--repository",
                str(repository),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--device",
                "cpu",
                *args,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            preexec_fn=None if open_files is None else lambda: _soft_open_files(open_files),
        )
        self.port = self.metrics_port = self.http_port = 0
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._started.wait(60) or not self.port:
            self.stop()
            raise AssertionError("server did not start:\n" + self.log_text())

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if match := re.search(r"metrics on https?://[\d.]+:(\d+)", line):
                self.metrics_port = int(match.group(1))
            if match := re.search(r"HTTP/REST on [\d.]+:(\d+)", line):
                self.http_port = int(match.group(1))
            if match := re.search(r"serving .* on [\d.]+:(\d+)", line):
                self.port = int(match.group(1))
                self._started.set()
        self._started.set()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """http://127.0.0.1:PORT of the REST endpoint (logged just after the gRPC port)."""
        if not wait_until(lambda: self.http_port, 10):
            raise AssertionError("the server logged no HTTP port:\n" + self.log_text())
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        return "".join(self.log)

    def stop(self) -> int | None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        self.proc.stderr.close()
        return self.proc.returncode


def _soft_open_files(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


# The client connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that send the preface and nothing more; closed on exit."""
    with contextlib.ExitStack() as stack:
        connections = []
        for _ in range(count):
            connection = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            connection.sendall(PREFACE)
            connections.append(connection)
        yield connections


def open_connections(port: int, count: int, first_bytes: bytes) -> list[socket.socket]:
    """`count` connections to the HTTP port, each having sent `first_bytes` (a request begun)."""
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(first_bytes)
        connections.append(connection)
    return connections


def trickle(connections: list[socket.socket], seconds: float, every: float) -> list[socket.socket]:
    """Slowloris: send each connection one more header byte every `every` seconds, for at
    most `seconds` or until the server has closed them all; returns those still open."""
    deadline = time.monotonic() + seconds
    open_ = list(connections)
    while open_ and time.monotonic() < deadline:
        still = []
        for connection in open_:
            try:
                connection.sendall(b"X")
                still.append(connection)
            except OSError:
                connection.close()
        open_ = still
        time.sleep(every)
    return open_
