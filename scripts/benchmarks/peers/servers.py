"""The servers of scripts/benchmarks/bench_peers.py, each serving the same ONNX files: deepr (this
checkout, its defaults), MLServer and KServe's Python model server (each in its own
virtualenv, made once: they pin packages that conflict with each other and with deepr)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from deepr.bench import free_port, server_subprocess
from exporters.repository import add_to_repository, serving_config

__all__ = ["MODELS", "SERVERS", "FLOORS", "Server", "deepr_with", "write_models", "served"]

HERE = Path(__file__).resolve().parent

MODELS = {"cnn": [1, 28, 28], "mlp": [784], "mnist_convnet": [1, 28, 28]}
"""Each model's input shape after the batch dimension."""


def _graph(name: str, layers: list[tuple[str, list[int]]], input_shape: list[int], seed: int = 0) -> onnx.ModelProto:
    """A chain of Conv (3x3) / MaxPool / Flatten / Gemm layers with ReLU between them and a
    softmax at the end; weights drawn at random (the bench measures serving, not accuracy)."""
    rng = np.random.default_rng(seed)
    nodes, weights, current = [], [], "input"
    for i, (kind, shape) in enumerate(layers):
        out = f"{kind.lower()}{i}"
        if kind in ("Conv", "Gemm"):
            w = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:] if kind == "Conv" else shape[:1]))).astype("f4")
            b = np.zeros(shape[0] if kind == "Conv" else shape[1], "f4")
            weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node(kind, [current, f"w{i}", f"b{i}"], [out]))
            if i < len(layers) - 1:
                nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"]))
                out = f"{out}_relu"
        elif kind == "MaxPool":
            nodes.append(helper.make_node("MaxPool", [current], [out], kernel_shape=[2, 2], strides=[2, 2]))
        else:
            nodes.append(helper.make_node("Flatten", [current], [out]))
        current = out
    nodes.append(helper.make_node("Softmax", [current], ["output"], axis=-1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _exported_convnet(folder: Path) -> onnx.ModelProto:
    """deepr's own export of the tutorial's MNIST convnet (PyTorch -> ONNX, untrained weights),
    its tensors renamed to the `input` and `output` every server here is sent and asked for."""
    import warnings

    from exporters import UntrainedWeightsWarning, export_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_model("mnist_convnet", folder / "exported")
    model = onnx.load(str(folder / "exported" / "mnist_convnet" / "1" / "model.onnx"))
    renames = {model.graph.input[0].name: "input", model.graph.output[0].name: "output"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    return model


def write_models(folder: Path) -> dict[str, Path]:
    """cnn: the tutorial's MNIST convnet (93,322 parameters) written with onnx.helper; mlp: its
    dense MNIST net (407,050); mnist_convnet: the convnet as deepr's exporter writes it."""
    cnn = [
        ("Conv", [32, 1, 3, 3]),
        ("MaxPool", []),
        ("Conv", [64, 32, 3, 3]),
        ("MaxPool", []),
        ("Conv", [64, 64, 3, 3]),
        ("Flatten", []),
        ("Gemm", [576, 64]),
        ("Gemm", [64, 10]),
    ]
    mlp = [("Gemm", [784, 512]), ("Gemm", [512, 10])]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, layers in {"cnn": cnn, "mlp": mlp}.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(_graph(name, layers, MODELS[name]), paths[name])
    paths["mnist_convnet"] = folder / "mnist_convnet.onnx"
    onnx.save(_exported_convnet(folder), paths["mnist_convnet"])
    return paths


def peer_python(home: Path, name: str, requirements: list[str], log: Callable[[str], None]) -> Path:
    """The Python of `name`'s virtualenv under `home`, made (and its requirements installed)
    the first time; a changed requirement list makes it again."""
    folder = home / name
    stamp = folder / "deepr-bench-requirements.txt"
    wanted = "\n".join(requirements)
    if not (stamp.exists() and stamp.read_text() == wanted):
        log(f"installing {' '.join(requirements)} into {folder} (once; a few minutes)")
        shutil.rmtree(folder, ignore_errors=True)
        venv.create(folder, with_pip=True)
        subprocess.run([folder / "bin" / "python", "-m", "pip", "install", "-qq", *requirements], check=True)
        stamp.write_text(wanted)
    return folder / "bin" / "python"


@dataclass(frozen=True)
class Server:
    name: str
    requirements: list[str]
    """What its virtualenv holds; empty: runs in this Python (deepr)."""
    command: Callable[[Path, dict[str, Path], Path, int, int], list[str]]
    """(python, models, work folder, gRPC port, HTTP port) -> the command that serves them."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables set for it, beside this process's."""
    http: bool = True
    """Whether it serves V2 over HTTP/REST too (on the HTTP port it is given)."""


def deepr_with(*flags: str) -> Callable[[Path, dict[str, Path], Path, int, int], list[str]]:
    """deepr serving a Triton-layout repository of the files, with its defaults and `flags`."""

    def command(python: Path, models: dict[str, Path], work: Path, port: int, http_port: int) -> list[str]:
        repository = work / "repository"
        for name, path in models.items():
            add_to_repository(repository, serving_config(name, max_batch_size=256), path)
        serve = [str(python), "-m", "deepr", "serve", "--repository", str(repository), "--host", "127.0.0.1"]
        ports = ["--port", str(port), "--http-port", str(http_port), "--metrics-port", "0"]
        return [*serve, *ports, "--device", "cpu", *flags]

    return command


def _mlserver(**overrides: object) -> Callable[[Path, dict[str, Path], Path, int, int], list[str]]:
    """MLServer with its defaults, or with these settings.json `overrides`."""
    return lambda python, models, work, port, http_port: _mlserver_command(
        python, models, work, port, http_port, overrides
    )


def _mlserver_command(
    python: Path, models: dict[str, Path], work: Path, port: int, http_port: int, overrides: dict
) -> list[str]:
    settings = {"grpc_port": port, "http_port": http_port, "metrics_port": free_port(), "host": "127.0.0.1"}
    settings.update(overrides)
    (work / "settings.json").write_text(json.dumps(settings))
    for name, path in models.items():
        folder = work / name
        folder.mkdir()
        shutil.copy(HERE / "mlserver_onnx.py", folder)
        shutil.copy(path, folder / "model.onnx")
        model_settings = {
            "name": name,
            "implementation": "mlserver_onnx.OnnxRuntimeModel",
            "parameters": {"uri": str(folder / "model.onnx")},
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings))
    return [str(python.parent / "mlserver"), "start", str(work)]


def _kserve(*flags: str) -> Callable[[Path, dict[str, Path], Path, int, int], list[str]]:
    """KServe's model server with its defaults, or with these command-line `flags`."""

    def command(python: Path, models: dict[str, Path], work: Path, port: int, http_port: int) -> list[str]:
        specs = [f"--model={name}={path}" for name, path in models.items()]
        ports = [f"--grpc_port={port}", f"--http_port={http_port}"]
        return [str(python), str(HERE / "kserve_onnx.py"), *specs, *ports, *flags]

    return command


def _triton(python: Path, models: dict[str, Path], work: Path, port: int, http_port: int) -> list[str]:
    """NVIDIA Triton through ../shared/peers/triton/serve_triton.sh (its own virtualenv, made on
    first use): Triton's C++ front and batcher, each ONNX file in a python-backend model."""
    script = Path(__file__).resolve().parents[4] / "shared" / "peers" / "triton" / "serve_triton.sh"
    specs = [f"{name}={path}:256" for name, path in models.items()]
    return ["bash", str(script), str(work / "triton"), str(port), str(http_port), str(free_port()), *specs]


def _floor(answer: str, api: str = "aio") -> Callable[[Path, dict[str, Path], Path, int, int], list[str]]:
    """scripts/benchmarks/peers/floor_server.py: what any Python gRPC server spends per call (gRPC only)."""

    def command(python: Path, models: dict[str, Path], work: Path, port: int, http_port: int) -> list[str]:
        specs = [f"--model={name}={path}" for name, path in models.items()]
        script = str(HERE / "floor_server.py")
        return [str(python), script, f"--port={port}", f"--answer={answer}", f"--api={api}", *specs]

    return command


_ORT = f"onnxruntime=={onnxruntime.__version__}"  # the peers run the same onnxruntime as deepr
_KSERVE = ["kserve==0.21.0", _ORT]
# uvloop 0.22 made asyncio.get_event_loop() raise outside a running loop, which MLServer
# 1.7.1's model workers call as they start.
_MLSERVER = ["mlserver==1.7.1", _ORT, "uvloop<0.22"]
SERVERS = {
    "deepr": Server("deepr", [], deepr_with()),
    # the same repository on Triton's C++ front, deepr's runtime in its python backend
    "deepr-triton": Server("deepr-triton", [], deepr_with("--engine", "triton")),
    "triton": Server("triton", [], _triton),
    "kserve": Server("kserve", _KSERVE, _kserve()),
    # Both peers log a line per request by default; their quiet setups turn that off, and
    # MLServer's runs the model in the server process instead of a worker process.
    "kserve-quiet": Server("kserve", _KSERVE, _kserve("--enable_latency_logging=false", "--configure_logging=false")),
    "mlserver": Server("mlserver", _MLSERVER, _mlserver()),
    "mlserver-quiet": Server("mlserver", _MLSERVER, _mlserver(debug=False, parallel_workers=0)),
}
FLOORS = {
    # Not servers anyone would deploy: grpc.aio answering at once, and running onnxruntime
    # per call with nothing else. What deepr spends above them is its own. grpc-floor-sync
    # answers at once from grpcio's synchronous server: the other Python API's floor.
    "grpc-floor": Server("grpc-floor", [], _floor("fixed"), http=False),
    "grpc-floor-sync": Server("grpc-floor-sync", [], _floor("fixed", api="sync"), http=False),
    "grpc-floor-ort": Server("grpc-floor-ort", [], _floor("onnxruntime"), http=False),
}


@contextlib.contextmanager
def served(
    server: Server, models: dict[str, Path], work: Path, peers_home: Path, log: Callable[[str], None]
) -> Iterator[tuple[str, str | None, int]]:
    """`server` up with every model ready: yields its gRPC address, its HTTP address (None
    where it has no HTTP) and its process id."""
    python = (
        peer_python(peers_home, server.name, server.requirements, log) if server.requirements else Path(sys.executable)
    )
    work.mkdir(parents=True)
    port, http_port = free_port(), free_port()
    command = server.command(python, models, work, port, http_port)
    url = f"127.0.0.1:{port}"
    env = {**os.environ, **dict(server.env)}
    with server_subprocess(server.name, command, url, models=list(models), cwd=work, env=env) as process:
        yield url, f"127.0.0.1:{http_port}" if server.http else None, process.pid
