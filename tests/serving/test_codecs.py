"""Tensor encoding edge cases that a client cannot easily send through tritonclient."""

import numpy as np
import pytest

from serving.protocol.codecs import (
    TensorSpec,
    decode_inputs,
    decode_outputs,
    deserialize_bytes,
    encode_output,
    serialize_bytes,
)
from serving.protocol.errors import InvalidInput
from serving.protocol.generated import grpc_predict_v2_pb2 as pb

SPEC = [TensorSpec("x", "FP32", (-1, 3))]


def request_with(shape, raw):
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_raw_input_is_a_zero_copy_view():
    data = np.arange(6, dtype="<f4").tobytes()
    array = decode_inputs(request_with((2, 3), data), SPEC)["x"]
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert not array.flags.writeable  # a view of the request's bytes, not a copy


def test_shape_whose_product_overflows_int64():
    with pytest.raises(InvalidInput, match="needs 55340232221128654848 bytes"):
        decode_inputs(request_with((2**62, 3), b"\0" * 12), [TensorSpec("x", "FP32", (-1, 3))])


def test_bytes_round_trip():
    array = np.array([[b"cat", b""], ["d\u00f6g", b"\x00\xff"]], dtype=object)
    raw = serialize_bytes(array)
    back = deserialize_bytes(raw, 4, "t").reshape(2, 2)
    assert back.tolist() == [[b"cat", b""], ["d\u00f6g".encode(), b"\x00\xff"]]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x05\x00\x00\x00ab", "announces 5 bytes, only 2 remain"),
        (b"\x01\x00", "1 BYTES elements need at least 4 bytes"),
        (b"\x01\x00\x00\x00ab", "1 bytes left over"),
    ],
)
def test_malformed_bytes(raw, message):
    with pytest.raises(InvalidInput, match=message):
        deserialize_bytes(raw, 1, "t")


def test_typed_contents_in_the_wrong_field():
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=(1, 3))
    tensor.contents.fp32_contents.extend([1, 2, 3])
    tensor.contents.int_contents.extend([1])
    with pytest.raises(InvalidInput, match="must be in contents.fp32_contents, found int_contents"):
        decode_inputs(request, SPEC)


def test_fp16_needs_raw_contents():
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP16", shape=(1, 3))
    with pytest.raises(InvalidInput, match="FP16 cannot travel in typed contents"):
        decode_inputs(request, [TensorSpec("x", "FP16", (-1, 3))])


def test_outputs_round_trip():
    response = pb.ModelInferResponse()
    arrays = {
        "f": np.random.rand(2, 5).astype(np.float32),
        "i": np.arange(4, dtype=np.int64),
        "s": np.array([b"a", b"bc"], dtype=object),
    }
    for name, array in arrays.items():
        encode_output(name, array, response)
    back = decode_outputs(response)
    assert [o.datatype for o in response.outputs] == ["FP32", "INT64", "BYTES"]
    for name in arrays:
        assert back[name].tolist() == arrays[name].tolist()


def test_labels_file_keeps_every_character_on_its_line(tmp_path):
    from serving.protocol.labels import read_labels, write_labels

    labels = ["\n", " ", "\\", "a", "\\n", "\r", "x y"]
    write_labels(tmp_path / "labels.txt", labels)
    assert len((tmp_path / "labels.txt").read_text().splitlines()) == len(labels)
    assert read_labels(tmp_path / "labels.txt") == labels


def test_a_malformed_response_is_the_servers_error_not_the_callers(monkeypatch):
    """Bytes that do not fit the shape the server announced: InferenceServerError (the CLI
    exits 1, a server failure), never a ValueError that reads as the caller's bad input."""
    import grpc

    from serving.client import InferenceClient, InferenceServerError

    broken = pb.ModelInferResponse(model_name="m")
    broken.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
    broken.raw_output_contents.append(b"\0" * 12)  # 3 floats for 10
    client = InferenceClient("localhost:1")
    monkeypatch.setattr(client, "_call", lambda method, request: broken)
    with pytest.raises(InferenceServerError, match="localhost:1 sent a malformed response") as raised:
        client.infer("m", {"images": np.zeros((1, 1, 28, 28), np.float32)})
    assert raised.value.code == grpc.StatusCode.INTERNAL
    client.close()
