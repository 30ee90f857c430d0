"""V2 REST inference bodies: JSON tensors and Triton's binary tensor data extension.

A request body is one JSON document, optionally followed by binary tensor data: the
`Inference-Header-Content-Length` header gives the JSON document's length, and each input
whose parameters carry `binary_data_size` takes that many bytes of what follows, in input
order. Inputs otherwise carry `data`, a row-major list (nested or flat) of numbers, booleans
or, for BYTES, strings (parsed by orjson: about nine times faster than the standard
library on a batch of numbers). The request becomes the protocol's protobuf ModelInferRequest, so
HTTP checks tensors, shared memory and classification exactly as gRPC does.

Outputs come back as JSON `data` unless the request asks for binary data (per output
`binary_data: true`, or `binary_data_output: true` for all); binary outputs follow the JSON
document in the same way as binary inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving.protocol.codecs import SHM_REGION, serialize_bytes, to_raw
from serving.protocol.datatypes import V2_TO_NUMPY, v2_dtype
from serving.protocol.errors import InvalidInput
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.server.dataplane import RequestedOutput
from serving.server.model import OnnxModel

__all__ = ["HEADER_LENGTH", "RestInferRequest", "parse_infer_request", "encode_infer_response"]

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"


@dataclass
class RestInferRequest:
    message: pb.ModelInferRequest
    """The request as the protocol's protobuf message, binary and JSON data as raw contents."""
    binary_outputs: set[str] = field(default_factory=set)
    """Outputs asked for as binary data."""
    all_binary: bool = False
    """binary_data_output: every output not named otherwise as binary data."""


def _json_document(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON document and the binary data after it."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be a byte count, got {header_length[:40]!r}") from None
        if not 0 < size <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {size}, but the body has {len(body)} bytes")
    try:
        document = orjson.loads(memoryview(body)[:size])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"the request body must be a JSON object, got {type(document).__name__}")
    return document, memoryview(body)[size:]


_INT64 = range(-(2**63), 2**63)
"""What the protocol's integers hold (JSON's do not stop there)."""


def _parameters(target: Any, values: Any, what: str) -> None:
    """Copy JSON `values` into a protobuf parameters map."""
    if values is None:
        return
    if not isinstance(values, dict):
        raise InvalidInput(f"{what}: 'parameters' must be an object")
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):  # before int: bool is an int in Python
            param.bool_param = value
        elif isinstance(value, int):
            if value not in _INT64:
                raise InvalidInput(f"{what}: parameter {key!r} is {value}, outside the 64-bit integers")
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidInput(f"{what}: parameter {key!r} must be a boolean, number or string")


def _shape(tensor: dict, what: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"{what}: 'shape' must be a list of integers, got {orjson.dumps(shape).decode()[:80]}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what}: shape {shape} has a negative dimension")
    if any(d not in _INT64 for d in shape):
        raise InvalidInput(f"{what}: shape {shape} has a dimension past 2^63 - 1")
    return shape


def _flat(data: Any) -> list:
    """Nested lists' leaves in row-major order, without recursion: orjson takes documents
    up to 1,024 levels deep, past Python's own recursion limit."""
    out: list = []
    stack = [iter([data])]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _json_data(data: Any, datatype: str, shape: list[int], what: str) -> bytes:
    """A tensor's JSON `data` as raw contents (little-endian, row-major; BYTES length-prefixed)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _flat(data)
        if not all(isinstance(i, str) for i in items):
            raise InvalidInput(f"{what}: BYTES data must be strings")
        if len(items) != count:
            raise InvalidInput(f"{what}: shape {shape} needs {count} values, data has {len(items)}")
        return serialize_bytes(np.array([i.encode() for i in items], dtype=np.object_))
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f"{what}: datatype {datatype!r} is not a V2 datatype ({', '.join(V2_TO_NUMPY)})")
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{what}: data is not an array of {datatype}: {exc}") from None
    if array.size != count:
        raise InvalidInput(f"{what}: shape {shape} needs {count} values, data has {array.size}")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()


def parse_infer_request(body: bytes, header_length: str | None, model: str, version: str) -> RestInferRequest:
    """A REST inference body as the protocol's request (InvalidInput naming what is wrong)."""
    document, binary = _json_document(body, header_length)
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=str(document.get("id", "")))
    _parameters(message.parameters, document.get("parameters"), "request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the request needs 'inputs', a list of tensors")
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f"inputs[{i}] must be an object with a 'name'")
        what = f"input {tensor['name']!r}"
        if not isinstance(tensor.get("datatype"), str):
            raise InvalidInput(f"{what}: 'datatype' must be a string such as \"FP32\"")
        entry = message.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=_shape(tensor, what))
        _parameters(entry.parameters, tensor.get("parameters"), what)
        if SHM_REGION in entry.parameters:
            continue  # read from the region when the model is known
        if BINARY_SIZE in entry.parameters:
            size = entry.parameters[BINARY_SIZE].int64_param
            if size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"{what}: {BINARY_SIZE} {size} goes past the binary data ({len(binary)} bytes after the JSON header)"
                )
            message.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in tensor:
            message.raw_input_contents.append(_json_data(tensor["data"], entry.datatype, list(entry.shape), what))
        else:
            raise InvalidInput(f"{what} has no data: give 'data', parameters.{BINARY_SIZE} or a shared memory region")
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary)} bytes of binary data after the JSON header, the inputs take {offset}"
        )
    request = RestInferRequest(message)
    request.all_binary = (
        message.parameters["binary_data_output"].bool_param if "binary_data_output" in message.parameters else False
    )
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    for i, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"outputs[{i}] must be an object with a 'name'")
        entry = message.outputs.add(name=output["name"])
        _parameters(entry.parameters, output.get("parameters"), f"output {output['name']!r}")
        binary_param = entry.parameters.get("binary_data")
        if binary_param is not None and binary_param.bool_param:
            request.binary_outputs.add(entry.name)
        elif binary_param is None and request.all_binary:
            request.binary_outputs.add(entry.name)
    return request


def _as_json(array: np.ndarray) -> list | np.ndarray:
    """An output's `data`: strings for BYTES, else the flat array itself (orjson writes numpy
    arrays directly, each float32 in its shortest form)."""
    if array.dtype == np.object_:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    return np.ascontiguousarray(array).reshape(-1)


def encode_infer_response(
    request: RestInferRequest, model: OnnxModel, outputs: dict[str, np.ndarray], requested: list[RequestedOutput]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON document's length when binary data follows it (None: all JSON)."""
    sinks = {r.name: r.sink for r in requested if r.sink is not None}
    binary = request.binary_outputs if requested else set(outputs) if request.all_binary else set()
    document: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": []}
    if request.message.id:
        document["id"] = request.message.id
    parts = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": v2_dtype(array), "shape": list(array.shape)}
        sink = sinks.get(name)
        if sink is not None:
            # Triton answers an output written to shared memory with its name, datatype and shape
            # alone; its C++ client reads binary_data_size from any parameters object it finds
            sink.write(array)
        elif name in binary:
            raw = to_raw(array)[1]
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            parts.append(raw)
        else:
            entry["data"] = _as_json(array)
        document["outputs"].append(entry)
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not parts:
        return header, None
    return b"".join([header, *parts]), len(header)
