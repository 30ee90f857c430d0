"""System shared memory: tensors that clients on the server's host pass through POSIX
shared memory objects instead of the gRPC message.

A client creates an object (`shm_open`, Python's multiprocessing.shared_memory,
tritonclient.utils.shared_memory), registers a byte range of it under a region name,
then names the region in an input's or requested output's parameters. Only tensor
metadata crosses the socket. This is the V2 protocol's system shared memory extension
as Triton implements it (same RPCs, parameter names and status codes).

The server never maps a client's object. A mapping faults (SIGBUS, the whole process
dies) when its client truncates the object while a request reads it, and any local
client can do that. Inputs are copied out with positioned reads (`preadv`) and outputs
written with `pwrite`: a truncated object gives a short read, which is an
INVALID_ARGUMENT for that request alone. The object is opened without following
symbolic links, must be a regular file owned by the server's user (or a group the
operator names), and registration is accepted only from this host's own addresses
(see `is_local_peer`).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from serving.protocol.codecs import SHM_BYTE_SIZE as BYTE_SIZE
from serving.protocol.codecs import SHM_OFFSET as OFFSET
from serving.protocol.codecs import SHM_REGION as REGION
from serving.protocol.codecs import TensorSpec, deserialize_bytes, to_raw
from serving.protocol.datatypes import V2_TO_NUMPY
from serving.protocol.errors import AlreadyExists, InvalidInput, NotEnabled, NotFound

__all__ = [
    "SharedMemoryRegions",
    "Region",
    "TensorSlice",
    "SHM_DIR",
    "is_local_peer",
    "is_loopback_address",
    "already_registered",
]

# Where Linux exposes POSIX shared memory objects: shm_open("/name") is /dev/shm/name.
SHM_DIR = Path("/dev/shm")

_REGION_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
"""Region names: 1 to 128 printable characters (they are echoed in messages and logs)."""
_KEY = re.compile(r"^/[^/\x00]{1,255}$")
"""POSIX shared memory names: a slash, then one path component of at most NAME_MAX bytes."""


def already_registered(name: str) -> AlreadyExists:
    """The refusal of a region name that is taken (Triton's status; the region stays)."""
    return AlreadyExists(f"shared memory region {name!r} is already registered; unregister it first")


def is_local_peer(peer: str) -> bool:
    """Whether a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:...`)
    is this host's loopback or a Unix socket. Shared memory names objects on the server's
    host, so a client elsewhere has no business registering them."""
    scheme, _, address = urllib.parse.unquote(peer).partition(":")
    if scheme in ("unix", "unix-abstract"):
        return True
    if scheme not in ("ipv4", "ipv6"):
        return False
    return is_loopback_address(address.rsplit(":", 1)[0].strip("[]"))


def is_loopback_address(host: str) -> bool:
    """Whether an IP address (IPv4-mapped IPv6 included) is this host's loopback."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Descriptor:
    """An open file descriptor, closed when the last holder lets go of it. A region that is
    unregistered while a request still reads it keeps its descriptor until that request is
    done, so the number can never come to point at another file meanwhile."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class Region:
    """`byte_size` bytes from `offset` of the shared memory object `key`, opened."""

    name: str
    key: str
    offset: int
    byte_size: int
    file: _Descriptor = field(repr=False, compare=False)

    def check_range(self, offset: int, byte_size: int, what: str) -> None:
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidInput(
                f"{what}: bytes {offset}..{offset + byte_size} are outside shared memory region {self.name!r} "
                f"({self.byte_size} bytes)"
            )

    def _shrank(self, what: str) -> InvalidInput:
        size = os.fstat(self.file.fileno()).st_size
        return InvalidInput(
            f"{what}: shared memory object {self.key!r} of region {self.name!r} shrank to {size} bytes after it "
            "was registered; register it again"
        )

    def read_into(self, target: memoryview, offset: int, what: str) -> None:
        """Fill `target` from byte `offset` of the region (positioned reads: no mapping to fault on)."""
        self.check_range(offset, target.nbytes, what)
        position, done = self.offset + offset, 0
        while done < target.nbytes:
            got = os.preadv(self.file.fileno(), [target[done:]], position + done)
            if got == 0:
                raise self._shrank(what)
            done += got

    def write_from(self, source: memoryview, offset: int, what: str) -> None:
        """Write `source` at byte `offset` of the region. An object truncated below the slice
        is refused rather than grown back."""
        self.check_range(offset, source.nbytes, what)
        position = self.offset + offset
        if os.fstat(self.file.fileno()).st_size < position + source.nbytes:
            raise self._shrank(what)
        done = 0
        while done < source.nbytes:
            done += os.pwrite(self.file.fileno(), source[done:], position + done)


@dataclass(frozen=True)
class TensorSlice:
    """Where one tensor of a request lives: a byte range of a registered region."""

    region: Region
    offset: int
    byte_size: int
    what: str
    """"input 'x'" or "output 'y'", for messages."""

    @property
    def region_name(self) -> str:
        return self.region.name

    def read(self, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor, copied out of the shared memory object."""
        count = math.prod(shape)
        if spec.datatype == "BYTES":
            data = bytearray(self.byte_size)
            self.region.read_into(memoryview(data), self.offset, self.what)
            return deserialize_bytes(bytes(data), count, spec.name).reshape(shape)
        dtype = V2_TO_NUMPY[spec.datatype].newbyteorder("<")
        if count * dtype.itemsize != self.byte_size:
            raise InvalidInput(
                f"{self.what}: shape {list(shape)} of {spec.datatype} needs {count * dtype.itemsize} bytes, "
                f"{BYTE_SIZE} is {self.byte_size}"
            )
        array = np.empty(shape, dtype=dtype)
        self.region.read_into(array.reshape(-1).view(np.uint8).data, self.offset, self.what)
        return array

    def write(self, array: np.ndarray) -> int:
        """Copy `array` (V2 encoding) to the start of the slice; returns the bytes written."""
        if array.dtype.kind in "OSU":
            _, raw = to_raw(array)
            source = np.frombuffer(raw, dtype=np.uint8)
        else:
            source = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        if source.size > self.byte_size:
            raise InvalidInput(f"{self.what}: the result needs {source.size} bytes, {BYTE_SIZE} is {self.byte_size}")
        self.region.write_from(source.data, self.offset, self.what)
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

    def __init__(self, directory: Path = SHM_DIR, *, enabled: bool = True, group: int | None = None) -> None:
        self.directory = directory
        self.enabled = enabled
        """False: every use is refused (a server started with --no-shared-memory)."""
        self.group = group
        """A group id whose objects are accepted besides those of the server's own user."""
        self._regions: dict[str, Region] = {}

    def _check_enabled(self, what: str = "system shared memory") -> None:
        if not self.enabled:
            raise NotEnabled(f"{what}: shared memory is off on this server (started with --no-shared-memory)")

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        self._check_enabled()
        if not _REGION_NAME.match(name):
            raise InvalidInput(f"shared memory region name {name[:64]!r}: expected 1 to 128 printable characters")
        if name in self._regions:
            raise already_registered(name)
        path = self._path(key)
        if byte_size <= 0 or offset < 0 or offset + byte_size >= 2**63:
            raise InvalidInput(
                f"shared memory region {name!r}: offset {offset} and byte_size {byte_size} must be "
                "an offset >= 0 and a size > 0 inside a file (below 2^63 bytes together)"
            )
        try:
            # O_NOFOLLOW: a symbolic link planted in the shared memory directory must not lead
            # the server to write outputs into a file elsewhere. O_NONBLOCK: a FIFO cannot hang it.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidInput(
                f"shared memory region {name!r}: no shared memory object {key!r} on the server's host"
            ) from None
        except OSError as exc:
            reason = "it is a symbolic link" if os.path.islink(path) else exc.strerror
            raise InvalidInput(f"shared memory region {name!r}: cannot open {key!r}: {reason}") from None
        file = _Descriptor(fd)
        refusal = self._refusal(os.fstat(fd), key, offset, byte_size)
        if refusal:
            file.close()
            raise InvalidInput(f"shared memory region {name!r}: {refusal}")
        region = self._regions[name] = Region(name, key, offset, byte_size, file)
        return region

    def _refusal(self, info: os.stat_result, key: str, offset: int, byte_size: int) -> str | None:
        """Why the opened object `key` cannot back a region, or None."""
        if not stat.S_ISREG(info.st_mode):
            return f"{key!r} is not a shared memory object (not a regular file)"
        if info.st_uid != os.geteuid() and (self.group is None or info.st_gid != self.group):
            return (
                f"{key!r} belongs to another user (uid {info.st_uid}); the server accepts objects of its own user"
                + ("" if self.group is None else f" or of group {self.group}")
            )
        if offset + byte_size > info.st_size:
            return f"offset {offset} + byte_size {byte_size} is beyond the end of {key!r} ({info.st_size} bytes)"
        return None

    def _path(self, key: str) -> Path:
        # POSIX names are one component after the slash; anything else could reach files
        # outside the shared memory directory.
        if not _KEY.match(key) or key in ("/.", "/.."):
            raise InvalidInput(
                f"shared memory key {key[:64]!r} is not a POSIX shared memory name: expected '/name' "
                "(one component of 1 to 255 characters, no NUL)"
            )
        if not self.directory.is_dir():
            raise NotEnabled(
                f"system shared memory needs {self.directory} (Linux); send tensors in the request instead"
            )
        return self.directory / key[1:]

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
        region.check_range(offset, byte_size, what)  # InvalidInput now rather than after the run
        return TensorSlice(region, offset, byte_size, what)
