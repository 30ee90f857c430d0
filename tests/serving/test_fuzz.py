"""Property-based tests: whatever a client sends, the server answers with a clear status and
message, never INTERNAL, never hangs, and the next good request still gets the right answer."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TEST_DEVICE
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
    "fp32",
    "",
    "COMPLEX",
]
CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

dims = st.one_of(st.integers(-3, 40), st.sampled_from([28, 784, 2**31, 2**40, 2**62, -(2**63)]))
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["images", "x", "", "probabilities"]),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.lists(dims, max_size=5),
        "raw": st.one_of(
            st.none(),
            st.binary(max_size=4096),
            st.integers(0, 40).map(lambda n: np.random.default_rng(n).random(n * 196).astype(np.float32).tobytes()),
        ),
        "typed": st.one_of(
            st.none(),
            st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=64),
            st.lists(st.binary(max_size=8), max_size=4),
        ),
        # Shared memory parameters: a registered region ("fuzz", 4096 bytes), unknown names,
        # sizes and offsets in and out of range, and values of the wrong kind.
        "shm": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "shared_memory_region": st.one_of(st.sampled_from(["fuzz", "nope", ""]), st.integers(-1, 1)),
                    "shared_memory_byte_size": st.one_of(
                        st.integers(-1, 5000), st.sampled_from([2**62, -(2**63)]), st.text(max_size=3)
                    ),
                    "shared_memory_offset": st.one_of(st.integers(-1, 5000), st.sampled_from([2**62, 4095])),
                }
            ),
        ),
    }
)
request = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["mnist_convnet", "mnist_dense", "", "nope", "../mnist_convnet"]),
        "version": st.sampled_from(["", "1", "2", "x", "-1"]),
        "inputs": st.lists(tensor, max_size=3),
        "outputs": st.lists(st.sampled_from(["probabilities", "nope", ""]), max_size=2),
        "class_count": st.one_of(st.none(), st.integers(-5, 20)),
    }
)


def build(spec: dict) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=spec["model"], model_version=spec["version"])
    raws = [t["raw"] for t in spec["inputs"]]
    for t in spec["inputs"]:
        entry = message.inputs.add(name=t["name"], datatype=t["datatype"])
        entry.shape.extend(t["shape"])
        for key, value in (t["shm"] or {}).items():
            field = "string_param" if isinstance(value, str) else "int64_param"
            setattr(entry.parameters[key], field, value)
        if t["typed"] is not None:
            if t["typed"] and isinstance(t["typed"][0], bytes):
                entry.contents.bytes_contents.extend(t["typed"])
            else:
                entry.contents.fp32_contents.extend(t["typed"])
    if all(r is not None for r in raws) and raws:
        message.raw_input_contents.extend(raws)
    for name in spec["outputs"]:
        out = message.outputs.add(name=name)
        if spec["class_count"] is not None:
            out.parameters["classification"].int64_param = spec["class_count"]
    return message


@pytest.fixture(scope="module")
def stub(server_url):
    from multiprocessing import shared_memory

    region = shared_memory.SharedMemory(create=True, size=4096)
    with grpc.insecure_channel(server_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="fuzz", key="/" + region.name, byte_size=4096)
        )
        yield stub
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="fuzz"))
    region.close()
    region.unlink()


def good_request() -> tuple[pb.ModelInferRequest, np.ndarray]:
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    message = pb.ModelInferRequest(model_name="mnist_convnet")
    message.inputs.add(name="images", datatype="FP32", shape=images.shape)
    message.raw_input_contents.append(images.tobytes())
    return message, images


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(spec=request)
def test_any_request_gets_a_clear_answer(stub, spec):
    try:
        stub.ModelInfer(build(spec), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR, (exc.code(), exc.details(), spec)
        assert exc.details() and len(exc.details()) > 10
    good, _ = good_request()
    answer = stub.ModelInfer(good, timeout=10)
    probabilities = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=2048))
def test_garbage_bytes(server_url, garbage):
    with grpc.insecure_channel(server_url) as channel:
        raw = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None
        )
        try:
            raw(garbage, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in CLEAR, (exc.code(), exc.details())
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in exc.details():
                assert "the request is not a valid protobuf message: Error parsing message" in exc.details()


def test_nan_and_infinity_are_data(stub):
    """Non-finite numbers are valid FP32 values: the request succeeds, and the other images of
    its batch get exactly the answers they get without it."""
    good, images = good_request()
    clean = np.frombuffer(stub.ModelInfer(good, timeout=10).raw_output_contents[0], np.float32).reshape(3, 10)
    images[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    good.raw_input_contents[0] = images.tobytes()
    dirty = np.frombuffer(stub.ModelInfer(good, timeout=10).raw_output_contents[0], np.float32).reshape(3, 10)
    np.testing.assert_array_equal(dirty[1:], clean[1:])


def test_oversize_messages_are_refused(repository):
    small = ServerSettings(
        repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1, max_message_bytes=1 << 20
    )
    with serve_in_thread(small) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        message = pb.ModelInferRequest(model_name="mnist_convnet")
        message.inputs.add(name="images", datatype="FP32", shape=[400, 1, 28, 28])
        message.raw_input_contents.append(bytes(400 * 784 * 4))  # 1.25 MB
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(message, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        good, _ = good_request()
        assert len(stub.ModelInfer(good, timeout=10).raw_output_contents[0]) == 3 * 10 * 4


def test_garbage_on_a_stream_is_refused_clearly(server_url):
    with grpc.insecure_channel(server_url) as channel:
        raw = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as err:
            list(raw(iter([b"\x00\x01garbage"]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in err.value.details()
