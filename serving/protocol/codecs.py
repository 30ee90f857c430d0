"""V2 tensors <-> numpy arrays: decode requests with every check, encode responses.

Raw contents are little-endian and row-major; numeric raw inputs become
zero-copy, read-only numpy views of the request's bytes. BYTES elements are each
prefixed by their length as a 4-byte little-endian integer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from serving.protocol.datatypes import V2_TO_NUMPY, v2_dtype
from serving.protocol.errors import InvalidInput
from serving.protocol.generated import grpc_predict_v2_pb2 as pb

__all__ = [
    "TensorSpec",
    "TensorSource",
    "TensorSink",
    "decode_inputs",
    "decode_outputs",
    "encode_output",
    "to_raw",
    "serialize_bytes",
    "as_text",
    "deserialize_bytes",
    "SHM_REGION",
    "SHM_BYTE_SIZE",
    "SHM_OFFSET",
]

# The parameters of the system shared memory extension: a tensor whose parameters name a
# registered region travels there instead of in the message.
SHM_REGION = "shared_memory_region"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_OFFSET = "shared_memory_offset"

# V2 datatype -> the InferTensorContents field that carries it when sent typed.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the V2 protocol describes it; -1 marks a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(want in (-1, got) for want, got in zip(self.shape, shape))


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> raw contents: each element length-prefixed, row-major."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


_LENGTH_PREFIX = 4
"""Bytes before each BYTES element: its length, a little-endian uint32."""


def deserialize_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    """Raw contents -> object array of `count` bytes elements. Every element takes at least
    its 4-byte length, so a count the contents cannot hold is refused before anything is
    allocated for it: a 50-byte request declaring 10^8 elements costs nothing."""
    if count * _LENGTH_PREFIX > len(raw):
        raise InvalidInput(
            f"input {name!r}: {count:,} BYTES elements need at least {count * _LENGTH_PREFIX:,} bytes "
            f"(a 4-byte length each), raw contents have {len(raw):,}"
        )
    out = np.empty(count, dtype=np.object_)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: raw BYTES contents end after {i} of {count} elements")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise InvalidInput(
                f"input {name!r}: BYTES element {i} announces {size} bytes, only {len(raw) - pos} remain"
            )
        out[i] = raw[pos : pos + size]
        pos += size
    if pos != len(raw):
        raise InvalidInput(f"input {name!r}: {len(raw) - pos} bytes left over after {count} BYTES elements")
    return out


def _check_header(
    tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec, max_batch_size: int
) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if tensor.datatype != spec.datatype:
        known = "" if tensor.datatype in V2_TO_NUMPY else " (not a V2 datatype)"
        raise InvalidInput(f"input {spec.name!r}: datatype {tensor.datatype!r}{known}, expected {spec.datatype!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {spec.name!r}: shape {list(shape)} has a negative dimension")
    if not spec.accepts(shape):
        want = "[" + ", ".join("-1" if d == -1 else str(d) for d in spec.shape) + "]"
        raise InvalidInput(f"input {spec.name!r}: shape {list(shape)} does not match the model's {want} (-1: any size)")
    if max_batch_size > 0 and shape[0] > max_batch_size:
        # Before any of its data is read: pictures are not decoded, elements not allocated.
        raise InvalidInput(
            f"input {spec.name!r}: batch of {shape[0]:,} exceeds the model's max_batch_size {max_batch_size}"
        )
    return shape


def _decode_raw(raw: bytes, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)  # Python ints: a huge shape cannot overflow
    if spec.datatype == "BYTES":
        return deserialize_bytes(raw, count, spec.name).reshape(shape)
    dtype = V2_TO_NUMPY[spec.datatype].newbyteorder("<")
    if count * dtype.itemsize != len(raw):
        raise InvalidInput(
            f"input {spec.name!r}: shape {list(shape)} of {spec.datatype} needs {count * dtype.itemsize} bytes, "
            f"raw_input_contents has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_typed(contents: pb.InferTensorContents, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    field = _CONTENTS_FIELD.get(spec.datatype)
    if field is None:
        raise InvalidInput(
            f"input {spec.name!r}: {spec.datatype} cannot travel in typed contents; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {spec.name!r}: shape {list(shape)} needs {count} values, contents.{field} has {len(values)}"
        )
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(
            f"input {spec.name!r}: {spec.datatype} data must be in contents.{field}, found {', '.join(others)}"
        )
    if spec.datatype == "BYTES":
        return np.array(list(values), dtype=np.object_).reshape(shape)
    return np.array(values, dtype=V2_TO_NUMPY[spec.datatype]).reshape(shape)


class TensorSource(Protocol):
    """Where an input lives outside the message (a shared memory slice, say)."""

    def read(self, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray: ...


class TensorSink(Protocol):
    """Where an output goes outside the message."""

    @property
    def region_name(self) -> str: ...

    @property
    def offset(self) -> int: ...

    def write(self, array: np.ndarray) -> int: ...


Locate = Callable[[Mapping, str], "TensorSource | None"]
"""(a tensor's parameters, what it is for messages) -> where it lives, or None: in the message."""


def in_message_only(parameters: Mapping, what: str) -> None:
    """The Locate of a reader without shared memory: a tensor naming a region is refused."""
    named = sorted({SHM_REGION, SHM_BYTE_SIZE, SHM_OFFSET} & set(parameters))
    if named:
        raise InvalidInput(f"{what}: parameters {named} point into shared memory, which this reader does not take")


def decode_inputs(
    request: pb.ModelInferRequest,
    specs: Sequence[TensorSpec],
    locate: Locate = in_message_only,
    max_batch_size: int = 0,
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, checked against the model's `specs`; an input that
    `locate` finds outside the message (a shared memory region) is read from there.
    `max_batch_size` > 0: the first dimension of every input is the batch, refused past it.

    Raises InvalidInput naming the first problem: unknown, duplicate or missing
    inputs, datatype, shape, batch size, or a byte/value count that does not fit the shape.
    Every count an input declares is checked against what it carries before anything of
    that size is allocated.
    """
    by_name = {s.name: s for s in specs}
    slices = [locate(tensor.parameters, f"input {tensor.name!r}") for tensor in request.inputs]
    raw = iter(request.raw_input_contents)
    if request.raw_input_contents:
        typed = next(
            (t.name for t, where in zip(request.inputs, slices) if where is None and t.HasField("contents")), None
        )
        if typed is not None:  # Triton's words: its clients look for them
            raise InvalidInput(
                f"contents field must not be specified when using raw_input_contents for {typed!r} for model "
                f"{request.model_name!r}"
            )
    in_message = sum(s is None for s in slices)
    if request.raw_input_contents and len(request.raw_input_contents) != in_message:
        raise InvalidInput(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for {in_message} inputs not in shared "
            "memory; send one per such input, in order"
        )
    arrays: dict[str, np.ndarray] = {}
    for tensor, where in zip(request.inputs, slices):
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unknown input {tensor.name!r}; model {request.model_name!r} takes {sorted(by_name)}")
        if tensor.name in arrays:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        shape = _check_header(tensor, spec, max_batch_size)
        if where is not None:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r} is in shared memory and also has typed contents; use one")
            arrays[tensor.name] = where.read(spec, shape)
        elif request.raw_input_contents:
            arrays[tensor.name] = _decode_raw(next(raw), spec, shape)
        else:
            arrays[tensor.name] = _decode_typed(tensor.contents, spec, shape)
    missing = [n for n in by_name if n not in arrays]
    if missing:
        raise InvalidInput(f"missing input(s) {missing}; model {request.model_name!r} takes {sorted(by_name)}")
    return arrays


def to_raw(array: np.ndarray) -> tuple[str, bytes]:
    """(V2 datatype, raw contents) of an array: little-endian row-major, or length-prefixed BYTES."""
    datatype = v2_dtype(array)
    if datatype == "BYTES":
        return datatype, serialize_bytes(array)
    return datatype, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_output(
    name: str, array: np.ndarray, response: pb.ModelInferResponse, shared: TensorSink | None = None
) -> None:
    """Append `array` to `response` as an output tensor with raw contents or, when `shared`
    is given, written to that shared memory slice (its raw contents entry stays empty, so
    entries keep lining up with outputs)."""
    if shared is None:
        datatype, raw = to_raw(array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw)
        return
    written = shared.write(array)
    tensor = response.outputs.add(name=name, datatype=v2_dtype(array), shape=array.shape)
    tensor.parameters[SHM_REGION].string_param = shared.region_name
    tensor.parameters[SHM_BYTE_SIZE].int64_param = written
    if shared.offset:
        tensor.parameters[SHM_OFFSET].int64_param = shared.offset
    response.raw_output_contents.append(b"")


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's outputs as arrays (raw or typed contents); BYTES as object arrays.
    Outputs the server wrote to shared memory are left out."""
    arrays: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for i, tensor in enumerate(response.outputs):
        if SHM_REGION in tensor.parameters:
            continue  # written to the client's shared memory; the caller reads it there
        shape = tuple(tensor.shape)
        if tensor.datatype not in V2_TO_NUMPY:
            raise ValueError(f"output {tensor.name!r} has unknown datatype {tensor.datatype!r}")
        spec = TensorSpec(tensor.name, tensor.datatype, shape)
        try:
            arrays[tensor.name] = (
                _decode_raw(raw[i], spec, shape) if raw else _decode_typed(tensor.contents, spec, shape)
            )
        except InvalidInput as exc:
            raise ValueError(f"malformed response: {exc}".replace("input ", "output ")) from None
    return arrays


def as_text(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES input as the ONNX string tensor it feeds: onnxruntime takes str elements, and
    would turn a bytes element into the text of its repr (b'...')."""
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        try:
            flat[i] = item.decode("utf-8") if isinstance(item, (bytes, bytearray)) else str(item)
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r} element {i}: not UTF-8 text (byte {exc.start}); the model's string tensor holds text"
            ) from None
    return out
