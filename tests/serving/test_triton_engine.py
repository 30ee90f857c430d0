"""`deepr serve --engine triton`: NVIDIA Triton's C++ server in front of deepr's runtime.

deepr's own tests of picture files and Grad-CAM run again here against the engine, beside
tests of what the engine itself adds: requests merged by Triton's batcher without one
client's rows reaching another, load requests that replace a config, NVIDIA's example
clients, and the flags it refuses. The first run installs Triton's server files from PyPI
(serving/triton_engine/distribution.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

# deepr's own tests of picture files, collected again here against the engine's server_url
from test_encoded_pictures import (  # noqa: F401  (fixtures and tests pytest collects from this module)
    MAX_PIXELS,
    encoded_repository,
    photo_files,
    test_a_bad_file_fails_its_own_request_naming_the_item,
    test_gradcam_from_picture_files,
    test_served_answers_equal_the_float_graph,
)
from triton_examples.run import CLIENTS, run_all

from deepr.bench import serve_subprocess
from serving.protocol.model_config import read_config
from serving.server.autocomplete import CompletionPolicy
from serving.server.model import RuntimeOptions
from serving.triton_engine import PLAN_FILE
from serving.triton_engine.distribution import TritonUnavailable, install_triton
from serving.triton_engine.repository import EngineOptions, translate_repository

_EXAMPLE_MODELS = ("simple", "simple_int8", "simple_string", "simple_identity", "densenet_onnx")


@pytest.fixture(scope="module")
def triton_files():
    try:
        return install_triton(log=lambda line: print(line, file=sys.stderr))
    except TritonUnavailable as exc:
        if sys.platform == "linux":
            raise  # Linux x86-64 runs it: a failed install is a failure
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def engine_repository(tmp_path_factory, repository, catsdogs_repository) -> Path:
    """The trained MNIST convnet, the cats-vs-dogs convnets behind pixels and picture files with
    their Grad-CAM graphs, and the ONNX models of NVIDIA's example repository, in one folder."""
    from triton_example_repository import write_example_repository

    folder = tmp_path_factory.mktemp("engine")
    examples = write_example_repository(folder / "examples")
    root = folder / "repository"
    root.mkdir()
    for source in [*repository.iterdir(), *catsdogs_repository.iterdir()]:
        os.symlink(source, root / source.name)
    for name in _EXAMPLE_MODELS:
        os.symlink(examples / name, root / name)
    return root


@pytest.fixture(scope="module")
def engine(engine_repository, triton_files):
    flags = ["--engine", "triton", "--id", "triton", "--max-picture-pixels", str(MAX_PIXELS)]
    with serve_subprocess(engine_repository, device="cpu", http_port=0, extra=flags, timeout=180) as (url, process):
        yield {"grpc": url, "http": process.http_url}


@pytest.fixture(scope="module")
def server_url(engine):
    """What deepr's own tests imported above call their server."""
    return engine["grpc"]


def _convnet_session(repository: Path) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(repository / "mnist_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def test_merged_requests_never_hand_one_client_anothers_rows(engine, repository):
    """96 requests of 1 to 4 rows, 32 at a time: each answer equals onnxruntime on that request's
    own rows, and Triton ran them in fewer runs than requests (its batcher merged them)."""
    rng = np.random.default_rng(0)
    requests = [rng.random((1 + i % 4, 1, 28, 28), dtype=np.float32) for i in range(96)]
    expected = [_convnet_session(repository).run(None, {"images": x})[0] for x in requests]
    client = grpcclient.InferenceServerClient(engine["grpc"])
    before = client.get_inference_statistics("mnist_convnet").model_stats[0]

    def ask(x: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("mnist_convnet", [tensor]).as_numpy("probabilities")

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, requests))
    for got, want in zip(answers, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
    after = client.get_inference_statistics("mnist_convnet").model_stats[0]
    requests_served = after.inference_stats.success.count - before.inference_stats.success.count
    runs = after.execution_count - before.execution_count
    assert requests_served == 96 and runs < 96, (requests_served, runs)


def test_http_answers_as_grpc_does_with_labels(engine, repository):
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    client = httpclient.InferenceServerClient(engine["http"])
    tensor = httpclient.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=2)]
    top = client.infer("mnist_convnet", [tensor], outputs=wanted).as_numpy("probabilities")
    scores = _convnet_session(repository).run(None, {"images": x})[0]
    for row, entries in zip(scores, top):
        score, index, label = entries[0].decode().split(":")
        assert int(index) == int(np.argmax(row)) and label == str(np.argmax(row))
        assert abs(float(score) - row.max()) < 1e-6


def test_a_load_request_replaces_the_config_and_a_plain_load_restores_it(engine):
    client = grpcclient.InferenceServerClient(engine["grpc"])
    client.load_model("simple", config='{"max_batch_size": 2}')
    assert client.get_model_config("simple").config.max_batch_size == 2
    x = np.arange(48, dtype=np.int32).reshape(3, 16)
    tensors = [grpcclient.InferInput(n, [3, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for t in tensors:
        t.set_data_from_numpy(x)
    with pytest.raises(Exception, match="batch"):
        client.infer("simple", tensors)  # 3 rows over the replaced max_batch_size of 2
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    client.load_model("simple")
    assert client.get_model_config("simple").config.max_batch_size == 8
    np.testing.assert_array_equal(client.infer("simple", tensors).as_numpy("OUTPUT0"), 2 * x)


def test_nvidias_example_clients(engine):
    """Those whose models the engine serves; the model-control examples count the repository's
    TensorFlow models, which no server without TensorFlow loads."""
    clients = [c for c in CLIENTS if not c.needs_cuda and "model_control" not in c.script and not c.leave_out]
    results = run_all(engine, cuda=False, clients=clients)
    failed = [f"{r['client']}:\n{r['output']}" for r in results if r["result"] != "PASS"]
    assert not failed, "\n\n".join(failed)
    assert len(results) >= 25


def test_the_repository_as_triton_takes_it(tmp_path, repository):
    options = EngineOptions(RuntimeOptions(device="cpu"), CompletionPolicy(), MAX_PIXELS, instances=2)
    written = translate_repository(repository, tmp_path / "out", options)
    assert written == {"mnist_convnet": "", "mnist_dense": ""}
    config = read_config(tmp_path / "out" / "mnist_convnet")
    assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 256)
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]  # --workers 2: two processes, KIND_CPU
    assert (tmp_path / "out" / "mnist_convnet" / "labels.txt").resolve() == (
        repository / "mnist_convnet" / "labels.txt"
    ).resolve()
    assert "TritonPythonModel" in (tmp_path / "out" / "mnist_convnet" / "1" / "model.py").read_text()
    assert (
        str((repository / "mnist_convnet" / "1" / "model.onnx").resolve())
        in (tmp_path / "out" / "mnist_convnet" / PLAN_FILE).read_text()
    )


def test_flags_the_engine_does_not_take_are_refused(tmp_path, repository):
    token = tmp_path / "token"
    token.write_text("secret")
    command = [sys.executable, "-m", "deepr", "serve", "--engine", "triton", "--repository", str(repository)]
    done = subprocess.run(
        [*command, "--token-file", str(token), "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "--engine triton does not take --token-file" in done.stderr


def test_triton_dying_is_started_again(tmp_path, triton_files):
    """Triton killed under the engine comes back on the same ports, serving as before."""
    import time

    import psutil
    from triton_example_repository import write_example_repository

    examples = write_example_repository(tmp_path / "examples")
    root = tmp_path / "repository"
    root.mkdir()
    os.symlink(examples / "simple", root / "simple")
    with serve_subprocess(root, device="cpu", extra=["--engine", "triton"], timeout=120) as (url, process):
        (triton,) = [p for p in psutil.Process(process.pid).children() if p.name() == "tritonserver"]
        triton.kill()
        triton.wait(10)
        client = grpcclient.InferenceServerClient(url)
        deadline = time.monotonic() + 90
        while True:
            try:
                if client.is_server_ready():
                    break
            except Exception:  # refused while it starts again
                pass
            assert time.monotonic() < deadline, "Triton was not started again within 90 s"
            time.sleep(0.5)
        assert process.poll() is None
        x = np.arange(16, dtype=np.int32).reshape(1, 16)
        tensors = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for t in tensors:
            t.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("simple", tensors).as_numpy("OUTPUT1"), 0 * x)
