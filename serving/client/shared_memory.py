"""The client's side of system shared memory: regions an InferenceClient owns, registers
with the server, and reuses, one per request in flight.

A request's input tensors are copied into a leased region and its outputs written there
by the server; the client copies the outputs out before handing the region back, so a
region is never read and rewritten at the same time.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from serving.protocol.codecs import SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION, TensorSpec, to_raw
from serving.protocol.datatypes import V2_TO_NUMPY, v2_dtype
from serving.protocol.generated import grpc_predict_v2_pb2 as pb

__all__ = ["RegionPool", "output_bytes", "place_request", "read_outputs", "input_bytes"]


@dataclass
class _Region:
    name: str
    memory: shared_memory.SharedMemory


class RegionPool:
    """Shared memory regions leased one per request; a lease grows its region when a
    request needs more bytes than it has (re-registering it under a new name)."""

    def __init__(self, register: Callable[[str, str, int], None], unregister: Callable[[str], None]) -> None:
        self._register = register
        self._unregister = unregister
        self._free: list[_Region] = []
        self._all: dict[str, _Region] = {}
        self._lock = threading.Lock()
        self._prefix = f"deepr-client-{os.getpid()}-{id(self):x}-"
        self._numbers = itertools.count()  # next() on it is atomic; a generator's is not, across threads

    @contextlib.contextmanager
    def lease(self, byte_size: int) -> Iterator[_Region]:
        with self._lock:
            region = self._free.pop() if self._free else None
        if region is None or region.memory.size < byte_size:
            if region is not None:
                self._drop(region)
            region = self._create(byte_size)
        try:
            yield region
        finally:
            with self._lock:
                self._free.append(region)

    def _create(self, byte_size: int) -> _Region:
        # Rounded up to 1 MiB steps so slowly growing requests do not re-register every time.
        size = max(1 << 20, -(-byte_size // (1 << 20)) * (1 << 20))
        memory = shared_memory.SharedMemory(create=True, size=size)
        region = _Region(f"{self._prefix}{next(self._numbers)}", memory)
        try:
            self._register(region.name, "/" + memory.name, size)
        except BaseException:
            memory.close()
            memory.unlink()
            raise
        with self._lock:
            self._all[region.name] = region
        return region

    def _drop(self, region: _Region) -> None:
        with self._lock:
            self._all.pop(region.name, None)
        try:
            self._unregister(region.name)
        finally:
            region.memory.close()
            region.memory.unlink()

    def close(self) -> None:
        """Unregister and free every region (leases must have ended)."""
        with self._lock:
            regions, self._all, self._free = list(self._all.values()), {}, []
        for region in regions:
            with contextlib.suppress(Exception):  # the server may be gone already; the memory is freed anyway
                self._unregister(region.name)
            region.memory.close()
            region.memory.unlink()


def output_bytes(spec: TensorSpec, rows: int | None) -> int | None:
    """Bytes of an output for a request of `rows` rows (None: unbatched), when the model's
    metadata fixes every other dimension; None when only the answer can tell (free
    dimensions, BYTES)."""
    if spec.datatype not in V2_TO_NUMPY or spec.datatype == "BYTES":
        return None
    dims = list(spec.shape)
    if rows is not None and dims and dims[0] == -1:
        dims[0] = rows
    if any(d < 0 for d in dims):
        return None
    return math.prod(dims) * V2_TO_NUMPY[spec.datatype].itemsize


def input_bytes(inputs: Mapping[str, np.ndarray]) -> int:
    """Bytes the inputs take in a region (BYTES tensors serialised)."""
    return sum(len(to_raw(a)[1]) if v2_dtype(a) == "BYTES" else a.nbytes for a in map(np.asarray, inputs.values()))


def place_request(
    request: pb.ModelInferRequest, region: _Region, inputs: Mapping[str, np.ndarray], outputs: Sequence[tuple[str, int]]
) -> dict[str, tuple[int, int]]:
    """Fill `request` with `inputs` written into `region`, and ask for `outputs` ((name,
    bytes) pairs) to be written after them; returns each output's (offset, bytes)."""
    offset = 0
    buffer = region.memory.buf
    assert buffer is not None  # a mapped region
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype, size = v2_dtype(array), array.nbytes
        if datatype == "BYTES":
            _, raw = to_raw(array)
            buffer[offset : offset + len(raw)] = raw
            size = len(raw)
        else:  # straight into the region, little-endian, without an intermediate bytes copy
            np.copyto(np.ndarray(array.shape, array.dtype.newbyteorder("<"), buffer=buffer, offset=offset), array)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        _point_at(tensor.parameters, region.name, offset, size)
        offset += size
    placed = {}
    for name, size in outputs:
        _point_at(request.outputs.add(name=name).parameters, region.name, offset, size)
        placed[name] = (offset, size)
        offset += size
    return placed


def read_outputs(
    response: pb.ModelInferResponse, region: _Region, placed: Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Copies of the outputs the server wrote into `region` (the region is reused afterwards)."""
    arrays = {}
    for tensor in response.outputs:
        if tensor.name in placed:
            offset, _ = placed[tensor.name]
            dtype = V2_TO_NUMPY[tensor.datatype].newbyteorder("<")
            arrays[tensor.name] = np.ndarray(tuple(tensor.shape), dtype, buffer=region.memory.buf, offset=offset).copy()
    return arrays


def _point_at(parameters, region: str, offset: int, byte_size: int) -> None:
    parameters[SHM_REGION].string_param = region
    parameters[SHM_BYTE_SIZE].int64_param = byte_size
    parameters[SHM_OFFSET].int64_param = offset
