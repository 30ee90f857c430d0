"""Giving memory back after a burst.

A burst of large requests has glibc's allocator take hundreds of megabytes for their
tensors and messages; freed, most of it stays in the allocator's arenas, so the
server's resident memory stays at its peak (measured: 2,000 requests of 0.8 MB with
clients cancelling on a 3 s deadline left 1.0-1.8 GB resident after each round, and
103 MB after one malloc_trim). Once no request has been in flight for a while, the
server asks the allocator to return what it keeps free. It asks again, with no new
request, when the allocator's free memory has grown since the last trim: the transport
frees the messages of calls that timed out before they were admitted after the dataplane
is idle, and those frees neither grow resident memory nor count as requests (measured:
452 MB resident left after the only trim of a round). Before each trim the cyclic garbage
collector runs: requests that failed or whose clients gave up leave reference cycles
holding their tensors, which an idle server would otherwise keep (measured: 109-254 MB
still in use after the trim of a burst, 24-35 MB once collected first). The allocator's free count is the
signal because a trim returns pages without taking their chunks off its free lists: the
count stays put after a trim and grows only with new frees.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from serving.server.dataplane import DataPlane

__all__ = ["release_free_memory", "trim_when_idle"]

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to ask
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    name = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(name), "mallinfo2") if name else None
    except (OSError, AttributeError):  # glibc before 2.33
        return None
    if function is not None:
        function.restype = _MallInfo2
    return function


_TRIM = _malloc_trim()
_MALLINFO2 = _mallinfo2()
_REGROWTH_BYTES = 32 * 2**20
"""Growth of free (or, without mallinfo2, resident) memory since the last trim that has an
idle server trim again."""


def resident_bytes() -> int:
    """This process's resident memory; 0 where /proc cannot tell."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def allocator_free_bytes() -> int:
    """Bytes the allocator holds free in its arenas; resident bytes where it cannot say."""
    if _MALLINFO2 is None:
        return resident_bytes()
    return int(_MALLINFO2().fordblks)


def release_free_memory() -> bool:
    """Return the allocator's free memory to the system; False where that cannot be asked."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def trim_when_idle(
    dataplane: "DataPlane",
    idle_seconds: float,
    *,
    release: Callable[[], bool] = release_free_memory,
    free_bytes: Callable[[], int] = allocator_free_bytes,
    collect: Callable[[], int] = gc.collect,
) -> None:
    """Runs until cancelled: after requests have come, or the allocator's free memory has
    grown, and the dataplane has had nothing to do for `idle_seconds`, releases free memory
    (in a thread: it walks the heap). `release` and `free_bytes` stand in for the allocator
    in tests, `collect` for the cycle collector (about 10 ms in a server process; seconds in
    a test session's)."""
    if _TRIM is None:
        logger.debug("malloc_trim is not available here; memory is not trimmed after bursts")
        return
    loop = asyncio.get_running_loop()
    trimmed_at = dataplane.admission.admitted
    free_after_trim = free_bytes()
    quiet_since = loop.time()
    while True:
        await asyncio.sleep(min(idle_seconds / 4, 0.5))  # trims within a quarter of idle_seconds of due
        if dataplane.busy():
            quiet_since = loop.time()
            continue
        if loop.time() - quiet_since < idle_seconds:
            continue
        regrown = free_bytes() > free_after_trim + _REGROWTH_BYTES
        if dataplane.admission.admitted != trimmed_at or regrown:
            trimmed_at = dataplane.admission.admitted
            resident_before = resident_bytes()
            # Failed and cancelled calls leave cycles (an exception, its traceback, the frames
            # holding the request's arrays) that only the cyclic collector frees, and an idle
            # server allocates too little to run it: collected first, their memory is trimmed too.
            unreachable = collect()
            await loop.run_in_executor(None, release)
            free_after_trim = free_bytes()
            logger.debug(
                "idle: %d unreachable objects collected, resident %d -> %d MB",
                unreachable,
                resident_before >> 20,
                resident_bytes() >> 20,
            )
