"""The V2 HTTP/REST endpoint, driven by tritonclient.http (sync and aio) and by plain HTTP
requests: the same answers as gRPC, the same errors as HTTP codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings


@contextlib.contextmanager
def http_client(address: str) -> Iterator[triton_http.InferenceServerClient]:
    """tritonclient.http's client, closed once: its __del__ closes it again from whichever
    thread collects it (a server thread, say), where gevent refuses to run."""
    client = triton_http.InferenceServerClient(address)
    try:
        yield client
    finally:
        client.close()
        client.close = lambda: None


@pytest.fixture(scope="module")
def server(repository):
    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE)
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with http_client(f"127.0.0.1:{server.http_port}") as client:
        yield client


@pytest.fixture(scope="module")
def grpc(server):
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{server.port}")


def digits(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", data=body, headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_health_metadata_and_config_match_grpc(http, grpc):
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("mnist_convnet") and not http.is_model_ready("no_such_model")
    metadata = http.get_server_metadata()
    assert metadata["name"] == "deepr" and "classification" in metadata["extensions"]
    model = http.get_model_metadata("mnist_convnet")
    assert model["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert model["versions"] == ["1"]
    config = http.get_model_config("mnist_convnet")
    reference = grpc.get_model_config("mnist_convnet").config
    assert config["max_batch_size"] == reference.max_batch_size
    assert config["input"][0]["dims"] == list(reference.input[0].dims) == [1, 28, 28]
    assert config["parameters"]["deepr.preprocessing"]["string_value"].startswith("{")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_gives_the_grpc_answer(http, grpc, binary):
    x = digits(5)
    tensor = triton_http.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
    answer = http.infer("mnist_convnet", [tensor], outputs=[out], request_id="r-7")
    reference_input = triton_grpc.InferInput("images", list(x.shape), "FP32")
    reference_input.set_data_from_numpy(x)
    reference = grpc.infer("mnist_convnet", [reference_input]).as_numpy("probabilities")
    np.testing.assert_allclose(answer.as_numpy("probabilities"), reference, rtol=1e-5, atol=1e-7)
    assert answer.get_response()["id"] == "r-7" and answer.get_response()["model_version"] == "1"


def test_a_large_json_batch_equals_its_binary_twin(http):
    """Over 256 KiB of JSON is parsed off the event loop: the same answer as binary data."""
    x = digits(64, seed=3)  # 50,176 numbers, about 1 MB of JSON
    answers = []
    for binary in (False, True):
        tensor = triton_http.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
        answers.append(http.infer("mnist_convnet", [tensor], outputs=[out]).as_numpy("probabilities"))
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-7)


def test_classification_extension_and_all_outputs(http, grpc):
    x = digits(3, seed=1)
    tensor = triton_http.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    top = http.infer(
        "mnist_convnet", [tensor], outputs=[triton_http.InferRequestedOutput("probabilities", class_count=3)]
    )
    reference_input = triton_grpc.InferInput("images", list(x.shape), "FP32")
    reference_input.set_data_from_numpy(x)
    reference = grpc.infer(
        "mnist_convnet", [reference_input], outputs=[triton_grpc.InferRequestedOutput("probabilities", class_count=3)]
    ).as_numpy("probabilities")
    # scores are printed to 6 digits: the class order and labels agree exactly
    labels = lambda rows: [[c.split(b":", 1)[1] for c in row] for row in rows]  # noqa: E731
    assert labels(top.as_numpy("probabilities")) == labels(reference)
    everything = http.infer("mnist_convnet", [tensor])  # no outputs named: each output, as JSON
    assert everything.as_numpy("probabilities").shape == (3, 10)


def test_statistics_count_http_requests(http):
    before = http.get_inference_statistics("mnist_convnet")["model_stats"][0]["inference_stats"]["success"]["count"]
    x = digits(1)
    tensor = triton_http.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    http.infer("mnist_convnet", [tensor])
    stats = http.get_inference_statistics("mnist_convnet")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == before + 1
    assert stats["name"] == "mnist_convnet" and isinstance(stats["inference_count"], int)


def test_aio_client(server):
    async def ask() -> tuple[bool, np.ndarray]:
        client = triton_http_aio.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        try:
            x = digits(2)
            tensor = triton_http_aio.InferInput("images", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            answer = await client.infer("mnist_convnet", [tensor])
            return await client.is_server_ready(), answer.as_numpy("probabilities")
        finally:
            await client.close()

    ready, probabilities = asyncio.run(ask())
    assert ready and probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_load_and_unload(repository, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repository, copy)
    settings = ServerSettings(repository=copy, host="127.0.0.1", port=0, device=TEST_DEVICE)
    with serve_in_thread(settings) as server, http_client(f"127.0.0.1:{server.http_port}") as client:
        client.unload_model("mnist_dense")
        assert not client.is_model_ready("mnist_dense")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert (
            index["mnist_dense"]["state"] == "UNAVAILABLE" and index["mnist_dense"]["reason"] == "unloaded by request"
        )
        client.load_model("mnist_dense")
        assert client.is_model_ready("mnist_dense")
        with pytest.raises(InferenceServerException, match="no model 'nope' in repository"):
            client.load_model("nope")


def test_errors_are_http_codes_with_reasons(server):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 3136},
                }
            ]
        }
    ).encode()
    binary = digits(1).tobytes()
    cases = [
        (
            "/v2/models/no_such/infer",
            header + binary,
            {"Inference-Header-Content-Length": str(len(header))},
            404,
            "unknown model",
        ),
        ("/v2/models/mnist_convnet/infer", b"{not json", {}, 400, "not JSON"),
        ("/v2/models/mnist_convnet/infer", b"[1, 2]", {}, 400, "must be a JSON object"),
        (
            "/v2/models/mnist_convnet/infer",
            header + binary[:100],
            {"Inference-Header-Content-Length": str(len(header))},
            400,
            "goes past the binary data",
        ),
        (
            "/v2/models/mnist_convnet/infer",
            header + binary,
            {"Inference-Header-Content-Length": "999999"},
            400,
            "the body has",
        ),
        (
            "/v2/models/mnist_convnet/infer",
            header + binary + b"xx",
            {"Inference-Header-Content-Length": str(len(header))},
            400,
            "the inputs take 3136",
        ),
        (
            "/v2/models/mnist_convnet/infer",
            json.dumps(
                {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [1.0, 2.0]}]}
            ).encode(),
            {},
            400,
            "needs 784 values, data has 2",
        ),
        (
            "/v2/models/mnist_convnet/infer",
            json.dumps(
                {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
            ).encode(),
            {},
            400,
            "does not match the model's",
        ),
        (
            "/v2/models/mnist_convnet/infer",
            json.dumps(
                {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["a"] * 784}]}
            ).encode(),
            {},
            400,
            "not an array of FP32",
        ),
        (
            "/v2/models/mnist_convnet/versions/9/infer",
            header + binary,
            {"Inference-Header-Content-Length": str(len(header))},
            404,
            "version 9 is not found",
        ),
    ]
    for path, body, headers, status, reason in cases:
        code, _, answer = post(server, path, body, headers)
        assert code == status and reason in json.loads(answer)["error"], (path, reason, code, answer)


def test_a_truncated_body_is_refused_not_hung(server, monkeypatch):
    """A client announcing more bytes than it sends is answered 400 once the body timeout passes."""
    from serving.server.http import app

    monkeypatch.setattr(app, "BODY_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(b'POST /v2/models/mnist_convnet/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"inp')
        answer = sock.recv(4096)
    assert b" 400 " in answer.split(b"\r\n")[0] and b"did not arrive whole" in answer, answer


def test_token_guards_everything_but_health_and_the_page(repository):
    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, token="s3cret")
    with serve_in_thread(settings) as server, http_client(f"127.0.0.1:{server.http_port}") as open_client:
        assert open_client.is_server_ready()  # probes need no token
        with pytest.raises(InferenceServerException, match="missing bearer token"):
            open_client.get_model_metadata("mnist_convnet")
        good = {"Authorization": "Bearer s3cret"}
        assert open_client.get_model_metadata("mnist_convnet", headers=good)["name"] == "mnist_convnet"
        with pytest.raises(InferenceServerException, match="invalid bearer token"):
            open_client.get_model_metadata("mnist_convnet", headers={"Authorization": "Bearer nope"})
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()


def test_body_size_limit(repository):
    settings = ServerSettings(
        repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, max_message_bytes=4096
    )
    with serve_in_thread(settings) as server:
        code, _, answer = post(server, "/v2/models/mnist_convnet/infer", b"x" * 10_000)
    assert code == 413 and "error" in json.loads(answer)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_examples(server, tmp_path):
    """The README's curl block, run as written against this server."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) if "curl" in b)
    script = block.replace("localhost:8000", f"127.0.0.1:{server.http_port}")
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "200"
    answer = json.loads(lines[-1])
    assert answer["model_name"] == "mnist_convnet" and answer["outputs"][0]["shape"] == [1, 3]
    assert '"name": "mnist_convnet"' in ran.stdout  # the metadata, pretty-printed


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
TENSOR_KEYS = st.sampled_from(["name", "shape", "datatype", "data", "parameters", "id", "inputs", "outputs"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.dictionaries(TENSOR_KEYS, JSON_VALUES, max_size=6)
    | st.fixed_dictionaries(
        {"inputs": st.lists(st.dictionaries(TENSOR_KEYS, JSON_VALUES, max_size=6), max_size=3)},
        optional={"outputs": JSON_VALUES, "parameters": JSON_VALUES},
    ),
    tail=st.binary(max_size=16),
)
def test_any_json_body_is_a_clear_refusal_never_a_500(server, document, tail):
    body = json.dumps(document).encode()
    code, _, answer = post(
        server, "/v2/models/mnist_convnet/infer", body + tail, {"Inference-Header-Content-Length": str(len(body))}
    )
    assert code in (200, 400), (code, answer)
    if code == 400:
        assert json.loads(answer)["error"]
