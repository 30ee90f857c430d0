"""The gRPC server answering NVIDIA's tritonclient, and refusing bad requests with the right status."""

import re

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def client(server_url):
    with triton.InferenceServerClient(server_url) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server_url):
    with grpc.insecure_channel(server_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def in_process(repository):
    return ort.InferenceSession(
        str(repository / "mnist_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def images(batch, seed=0):
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def triton_input(x, name="images", datatype="FP32"):
    inp = triton.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist_convnet") and client.is_model_ready("mnist_convnet", "1")
    assert not client.is_model_ready("mnist_convnet", "2")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta.name == "deepr" and "classification" in meta.extensions


def test_model_metadata(client):
    meta = client.get_model_metadata("mnist_convnet")
    assert meta.name == "mnist_convnet" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("images", "FP32", [-1, 1, 28, 28])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probabilities", "FP32", [-1, 10])]


def test_model_config(client):
    config = client.get_model_config("mnist_dense").config
    assert config.name == "mnist_dense" and config.max_batch_size == 256 and config.backend == "onnxruntime"
    assert list(config.input[0].dims) == [784]
    assert config.output[0].label_filename == "labels.txt"
    assert "deepr.preprocessing" in config.parameters


@pytest.mark.parametrize("batch", [1, 5, 256])
def test_infer_equals_in_process_onnxruntime(client, in_process, batch):
    x = images(batch, seed=batch)
    result = client.infer("mnist_convnet", [triton_input(x)], request_id=f"req-{batch}")
    got = result.as_numpy("probabilities")
    want = in_process.run(None, {"images": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert result.get_response().id == f"req-{batch}" and result.get_response().model_version == "1"


def test_classification_extension(client, in_process):
    x = images(4, seed=9)
    result = client.infer(
        "mnist_convnet", [triton_input(x)], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)]
    )
    classes = result.as_numpy("probabilities")
    assert classes.shape == (4, 3)
    probs = in_process.run(None, {"images": x})[0]
    for row, p in zip(classes, probs):
        score, index, label = row[0].decode().split(":")
        assert int(index) == p.argmax() and label == str(p.argmax())
        assert float(score) == pytest.approx(p.max(), abs=1e-6)


def test_typed_contents_equal_raw(stub, in_process):
    x = images(2, seed=3)
    request = pb.ModelInferRequest(model_name="mnist_convnet")
    request.inputs.add(name="images", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(got, in_process.run(None, {"images": x})[0], rtol=1e-6, atol=1e-7)


def test_health_service(server_url):
    with grpc.insecure_channel(server_url) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "inference.GRPCInferenceService"):
            assert (
                check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
            )


def raw_request(shape=(1, 1, 28, 28), datatype="FP32", name="images", data=None, model="mnist_convnet", version=""):
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(
        data if data is not None else images(shape[0] if shape and shape[0] > 0 else 1).tobytes()
    )
    return request


def with_duplicate_input():
    request = raw_request()
    request.inputs.add(name="images", datatype="FP32", shape=(1, 1, 28, 28))
    request.raw_input_contents.append(images(1).tobytes())
    return request


def with_extra_raw():
    request = raw_request()
    request.raw_input_contents.append(b"\x00" * 8)
    return request


def with_typed_and_raw():
    """Triton's explicit-content examples send this and look for Triton's words."""
    request = raw_request()
    request.raw_input_contents.append(b"\x00" * 8)
    request.inputs[0].contents.fp32_contents.extend([0.0] * 784)
    return request


def with_unknown_output():
    request = raw_request()
    request.outputs.add(name="logits")
    return request


def with_bad_typed_count():
    request = pb.ModelInferRequest(model_name="mnist_convnet")
    request.inputs.add(name="images", datatype="FP32", shape=(1, 1, 28, 28)).contents.fp32_contents.extend([0.0] * 10)
    return request


def with_bad_classification_param():
    request = raw_request()
    request.outputs.add(name="probabilities").parameters["classification"].string_param = "3"
    return request


BAD_REQUESTS = {
    "unknown model": (
        raw_request(model="mnist_resnet"),
        grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'mnist_resnet' is not found",
    ),
    "unknown version": (raw_request(version="7"), grpc.StatusCode.NOT_FOUND, "'mnist_convnet' version 7 is not found"),
    "version not a number": (
        raw_request(version="latest"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "version string 'latest': version should be an integral value > 0",
    ),
    "typed and raw contents": (
        with_typed_and_raw(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "contents field must not be specified when using raw_input_contents for 'images' for model 'mnist_convnet'",
    ),
    "wrong input name": (
        raw_request(name="pixels"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input 'pixels'.*images",
    ),
    "wrong rank": (
        raw_request(shape=(1, 28, 28), data=images(1).tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"shape \[1, 28, 28\] does not match.*\[-1, 1, 28, 28\]",
    ),
    "wrong size": (
        raw_request(shape=(1, 1, 32, 32), data=b"\0" * 4096),
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not match",
    ),
    "wrong datatype": (
        raw_request(datatype="FP64", data=b"\0" * 6272),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype 'FP64', expected 'FP32'",
    ),
    "unknown datatype": (raw_request(datatype="FLOAT"), grpc.StatusCode.INVALID_ARGUMENT, "not a V2 datatype"),
    "short bytes": (
        raw_request(data=b"\0" * 3000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 3136 bytes, raw_input_contents has 3000",
    ),
    "negative dim": (raw_request(shape=(-1, 1, 28, 28)), grpc.StatusCode.INVALID_ARGUMENT, "negative dimension"),
    "empty batch": (raw_request(shape=(0, 1, 28, 28), data=b""), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    "over max batch": (
        raw_request(shape=(257, 1, 28, 28), data=images(257).tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds .*max_batch_size 256",
    ),
    "missing input": (
        pb.ModelInferRequest(model_name="mnist_convnet"),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"missing input\(s\) \['images'\]",
    ),
    "duplicate input": (with_duplicate_input(), grpc.StatusCode.INVALID_ARGUMENT, "given twice"),
    "raw count": (with_extra_raw(), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2 entries for 1 inputs"),
    "unknown output": (with_unknown_output(), grpc.StatusCode.INVALID_ARGUMENT, r"unknown output\(s\) \['logits'\]"),
    "typed count": (
        with_bad_typed_count(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 784 values, contents.fp32_contents has 10",
    ),
    "classification type": (with_bad_classification_param(), grpc.StatusCode.INVALID_ARGUMENT, "int64 class count"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_status_and_message(stub, case):
    request, code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == code
    assert re.search(message, info.value.details()), info.value.details()
    # The server stays correct for the next good request.
    assert len(stub.ModelInfer(raw_request()).raw_output_contents[0]) == 40


def test_tritonclient_sees_the_status(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("mnist_convnet", "3")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.infer("mnist_convnet", [triton_input(np.zeros((1, 784), dtype=np.float32))])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "does not match" in info.value.message()


def test_stream_infer_with_tritonclient(client, in_process):
    import queue

    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for batch in (1, 3):
            client.async_stream_infer(
                "mnist_convnet", [triton_input(images(batch, seed=batch))], request_id=f"s{batch}"
            )
        client.async_stream_infer(
            "mnist_convnet", [triton_input(np.zeros((1, 784), dtype=np.float32))], request_id="bad"
        )
        client.async_stream_infer("mnist_convnet", [triton_input(images(2, seed=2))], request_id="s2")
        got = [results.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    for (result, error), batch in zip([got[0], got[1], got[3]], (1, 3, 2)):
        assert error is None
        np.testing.assert_allclose(
            result.as_numpy("probabilities"),
            in_process.run(None, {"images": images(batch, seed=batch)})[0],
            rtol=1e-6,
            atol=1e-7,
        )
    assert got[2][0] is None and "INVALID_ARGUMENT" in str(got[2][1]) and "does not match" in str(got[2][1])


def test_statistics_count_what_was_sent(repository):
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    with serve_in_thread(ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as fresh:
            for batch in (1, 4, 7):
                fresh.infer("mnist_convnet", [triton_input(images(batch))])
            with pytest.raises(InferenceServerException):
                fresh.infer("mnist_convnet", [triton_input(np.zeros((1, 784), dtype=np.float32))])
            stats = fresh.get_inference_statistics("mnist_convnet").model_stats
            everything = fresh.get_inference_statistics().model_stats
            with pytest.raises(InferenceServerException, match="unknown model"):
                fresh.get_inference_statistics("nope")
    (s,) = stats
    assert (s.name, s.version, s.inference_count, s.execution_count) == ("mnist_convnet", "1", 12, 3)
    infer = s.inference_stats
    assert (infer.success.count, infer.fail.count, infer.compute_infer.count) == (3, 1, 3)
    assert infer.success.ns >= infer.compute_infer.ns > 0 and s.last_inference > 0
    assert [m.name for m in everything] == ["mnist_convnet"]


def test_a_client_leaving_mid_answer_is_not_a_traceback(caplog):
    """grpc's failed send to a client that has just cancelled reaches the event loop's
    exception handler; the server's handler keeps it out of the error log, and nothing else."""
    import asyncio
    import logging

    from grpc._cython import cygrpc

    from serving.server.grpc.server import _quiet_when_clients_leave

    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            _quiet_when_clients_leave(
                loop,
                {
                    "message": "Task exception was never retrieved",
                    "exception": cygrpc.ExecuteBatchError("Failed 'execute_batch'"),
                },
            )
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            _quiet_when_clients_leave(
                loop, {"message": "Task exception was never retrieved", "exception": ValueError("a bug")}
            )
            assert [r for r in caplog.records if r.levelno >= logging.ERROR and "a bug" in str(r.exc_info)]
    finally:
        loop.close()


def test_the_server_answers_with_the_id_it_was_given(repository):
    """Triton's --id: its health examples check that the server calls itself "triton"."""
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, server_id="triton")
    with serve_in_thread(settings) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            assert client.get_server_metadata().name == "triton"


def test_a_stream_runs_its_requests_together(client):
    """Requests on one ModelStreamInfer stream run as they arrive, merged by the batcher, and
    come back in the order sent, each with its id (one at a time, 64 requests made 64 runs)."""
    import queue

    def counts():
        (stats,) = client.get_inference_statistics("mnist_convnet").model_stats
        return stats.inference_count, stats.execution_count

    results: queue.Queue = queue.Queue()
    inferred, executed = counts()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(64):
            client.async_stream_infer("mnist_convnet", [triton_input(images(1, seed=i))], request_id=f"r{i}")
        got = [results.get(timeout=60) for _ in range(64)]
    finally:
        client.stop_stream()
    assert all(error is None for _, error in got)
    assert [result.get_response().id for result, _ in got] == [f"r{i}" for i in range(64)]
    now_inferred, now_executed = counts()
    assert now_inferred - inferred == 64
    assert now_executed - executed < 64, "every streamed request ran alone"
