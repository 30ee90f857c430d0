"""System shared memory: tensors that clients on the server's host pass through POSIX
shared memory objects instead of the gRPC message.

A client creates an object (`shm_open`, Python's multiprocessing.shared_memory,
tritonclient.utils.shared_memory), registers a byte range of it under a region name,
then names the region in an input's or requested output's parameters. The server
maps each registered object once; inputs are read as numpy views of the mapping (no
copy on the way in) and outputs are written into it, so only tensor metadata
crosses the socket. This is the V2 protocol's system shared memory extension as
Triton implements it (same RPCs, parameter names and status codes).
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .codecs import TensorSpec, deserialize_bytes, to_raw
from .datatypes import V2_TO_NUMPY
from .errors import AlreadyExists, InvalidInput, NotEnabled, NotFound

__all__ = ["SharedMemoryRegions", "Region", "TensorSlice", "SHM_DIR"]

# Where Linux exposes POSIX shared memory objects: shm_open("/name") is /dev/shm/name.
SHM_DIR = Path("/dev/shm")

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True)
class Region:
    """`byte_size` bytes from `offset` of the shared memory object `key`, mapped."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap = field(repr=False, compare=False)

    def view(self, offset: int, byte_size: int, what: str) -> memoryview:
        """Bytes [offset, offset + byte_size) of the region; InvalidInput naming `what` if they do not fit."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidInput(
                f"{what}: bytes {offset}..{offset + byte_size} are outside shared memory region {self.name!r} "
                f"({self.byte_size} bytes)"
            )
        start = self.offset + offset
        # Touching mapped pages past the end of a file kills the process (SIGBUS), and the
        # client may shrink its object after registering it: check its size now (mmap.size()
        # asks the file, not the mapping). A client that shrinks it between this check and
        # the run that reads it can still do harm; servers whose clients on the host are not
        # trusted run --no-shared-memory.
        if start + byte_size > self.mapping.size():
            raise InvalidInput(
                f"{what}: shared memory object {self.key!r} of region {self.name!r} shrank to {self.mapping.size()} "
                f"bytes after it was registered; register it again"
            )
        return memoryview(self.mapping)[start : start + byte_size]


@dataclass(frozen=True)
class TensorSlice:
    """Where one tensor of a request lives: a byte range of a registered region."""

    region: Region
    offset: int
    byte_size: int
    what: str
    """"input 'x'" or "output 'y'", for messages."""

    def read(self, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor as a read-only array over the shared memory (BYTES: decoded copies)."""
        data = self.region.view(self.offset, self.byte_size, self.what)
        count = math.prod(shape)
        if spec.datatype == "BYTES":
            return deserialize_bytes(bytes(data), count, spec.name).reshape(shape)
        dtype = V2_TO_NUMPY[spec.datatype].newbyteorder("<")
        if count * dtype.itemsize != self.byte_size:
            raise InvalidInput(
                f"{self.what}: shape {list(shape)} of {spec.datatype} needs {count * dtype.itemsize} bytes, "
                f"{BYTE_SIZE} is {self.byte_size}"
            )
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
        array.flags.writeable = False  # the server never writes into a client's input
        return array

    def write(self, array: np.ndarray) -> int:
        """Copy `array` (V2 encoding) to the start of the slice; returns the bytes written."""
        if array.dtype.kind in "OSU":
            _, raw = to_raw(array)
            source = np.frombuffer(raw, dtype=np.uint8)
        else:
            source = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        if source.size > self.byte_size:
            raise InvalidInput(
                f"{self.what}: the result needs {source.size} bytes, {BYTE_SIZE} is {self.byte_size}"
            )
        target = np.frombuffer(self.region.view(self.offset, source.size, self.what), dtype=np.uint8)
        np.copyto(target, source)
        return int(source.size)


def _int_parameter(parameters: Mapping, name: str, what: str, default: int | None = None) -> int:
    param = parameters.get(name)
    if param is None:
        if default is None:
            raise InvalidInput(f"{what}: {REGION} needs an int64 {name!r} parameter too")
        return default
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"{what}: parameter {name!r} must be an integer, got {kind or 'nothing'}")
    value = getattr(param, kind)
    if value < 0:
        raise InvalidInput(f"{what}: parameter {name!r} must be >= 0, got {value}")
    return value


class SharedMemoryRegions:
    """The regions registered on one server, by name."""

    def __init__(self, directory: Path = SHM_DIR, *, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        """False: every use is refused (a server started with --no-shared-memory)."""
        self._regions: dict[str, Region] = {}

    def _check_enabled(self, what: str = "system shared memory") -> None:
        if not self.enabled:
            raise NotEnabled(f"{what}: shared memory is off on this server (started with --no-shared-memory)")

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        self._check_enabled()
        if not name:
            raise InvalidInput("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region {name!r} is already registered; unregister it first")
        path = self._path(key)
        if byte_size == 0:
            raise InvalidInput(f"shared memory region {name!r}: byte_size must be > 0")
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise InvalidInput(f"shared memory region {name!r}: no shared memory object {key!r} on the server's host") from None
        except OSError as exc:
            raise InvalidInput(f"shared memory region {name!r}: cannot open {key!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidInput(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} is beyond the end of "
                    f"{key!r} ({size} bytes)"
                )
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the object alive on its own
        region = self._regions[name] = Region(name, key, offset, byte_size, mapping)
        return region

    def _path(self, key: str) -> Path:
        # POSIX names are one component after the slash; anything else could reach files
        # outside the shared memory directory.
        component = key[1:] if key.startswith("/") else ""
        if not component or "/" in component or component in (".", ".."):
            raise InvalidInput(f"shared memory key {key!r} is not a POSIX shared memory name: expected '/name'")
        if not self.directory.is_dir():
            raise NotEnabled(f"system shared memory needs {self.directory} (Linux); send tensors in the request instead")
        return self.directory / component

    def unregister(self, name: str = "") -> None:
        """Forget `name` (every region when empty); unknown names are not an error. Requests
        already holding the region finish with it: the mapping lives until they let go."""
        self._check_enabled()
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str = "") -> list[Region]:
        self._check_enabled()
        if not name:
            return list(self._regions.values())
        if name not in self._regions:
            raise NotFound(f"no shared memory region {name!r} is registered")
        return [self._regions[name]]

    def tensor_slice(self, parameters: Mapping, what: str) -> TensorSlice | None:
        """The slice a tensor's parameters point at, or None when it travels in the message."""
        if REGION not in parameters:
            stray = sorted({BYTE_SIZE, OFFSET} & set(parameters))
            if stray:
                raise InvalidInput(f"{what}: parameters {stray} need {REGION!r} too")
            return None
        self._check_enabled(what)
        param = parameters[REGION]
        if param.WhichOneof("parameter_choice") != "string_param":
            raise InvalidInput(f"{what}: parameter {REGION!r} must be a string (a registered region's name)")
        region = self._regions.get(param.string_param)
        if region is None:
            raise InvalidInput(f"{what}: shared memory region {param.string_param!r} is not registered")
        byte_size = _int_parameter(parameters, BYTE_SIZE, what)
        offset = _int_parameter(parameters, OFFSET, what, default=0)
        region.view(offset, byte_size, what)  # in range, or InvalidInput now rather than after the run
        return TensorSlice(region, offset, byte_size, what)
