"""The idle trimmer: when it gives memory back, and when it leaves the allocator alone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from serving.server import memory


class QuietDataplane:
    """A dataplane that is never busy and whose admission count the test moves."""

    def __init__(self) -> None:
        self.admission = SimpleNamespace(admitted=0)

    def busy(self) -> bool:
        return False


def trims_during(steps, collect=lambda: 0) -> list[int]:
    """Runs the trimmer (idle after 20 ms) while `steps(dataplane, free)` changes what it
    sees; returns the allocator's free bytes at each trim. The cycle collector is left out
    unless `collect` says otherwise: in a test session's large heap it takes long enough
    to shift the steps' timing."""
    free = [100 * 2**20]
    trims: list[int] = []

    def release() -> bool:
        trims.append(free[0])
        return True

    async def main() -> None:
        dataplane = QuietDataplane()
        # fakes passed in, not patched into the module: a server of another test may be trimming
        trimmer = asyncio.create_task(
            memory.trim_when_idle(dataplane, 0.02, release=release, free_bytes=lambda: free[0], collect=collect)
        )
        await asyncio.sleep(0.01)  # the trimmer takes its starting point
        await steps(dataplane, free)
        trimmer.cancel()

    if memory._TRIM is not None:
        asyncio.run(main())
    return trims


def test_an_untouched_server_never_trims():
    async def steps(dataplane, free):
        await asyncio.sleep(0.5)

    assert trims_during(steps) == []


def test_new_requests_trim_once_then_rest():
    async def steps(dataplane, free):
        dataplane.admission.admitted = 5
        await asyncio.sleep(0.5)

    if memory._TRIM is not None:
        assert trims_during(steps) == [100 * 2**20]


def test_memory_freed_without_requests_is_trimmed_again():
    """Calls that time out before admission leave their messages to be freed later; a trim
    leaves the free count where it was, so it alone does not start another."""

    async def steps(dataplane, free):
        dataplane.admission.admitted = 5
        await asyncio.sleep(0.5)
        free[0] = 600 * 2**20  # freed past the margin with no new request
        await asyncio.sleep(0.5)
        free[0] = 610 * 2**20  # within the margin of the count after that trim
        await asyncio.sleep(0.5)

    if memory._TRIM is not None:
        assert trims_during(steps) == [100 * 2**20, 600 * 2**20]


def test_the_allocator_counts_what_is_freed():
    """The real signal: freeing chunks inside the heap grows the allocator's free count."""
    if memory._MALLINFO2 is None:
        return
    blocks = [bytearray(100_000) for _ in range(1_000)]  # under the mmap threshold: heap chunks
    before = memory.allocator_free_bytes()  # after the allocation, which may have used free chunks
    del blocks[::2]  # freed between live chunks, so the heap cannot shrink by itself
    assert memory.allocator_free_bytes() > before + 40 * 10**6
    del blocks


def test_an_idle_trim_frees_what_only_the_cycle_collector_can():
    """A failed call's exception, traceback and frames form a cycle holding its tensors;
    the trim collects such cycles first, so their memory is given back too."""
    import gc
    import weakref

    import numpy as np

    class Tensors:
        def __init__(self) -> None:
            self.array = np.zeros(1000, np.float32)
            self.me = self  # a cycle: reference counting alone never frees it

    freed = []

    async def steps(dataplane, free):
        tensors = Tensors()
        alive = weakref.ref(tensors)
        del tensors
        assert alive() is not None
        dataplane.admission.admitted = 5
        await asyncio.sleep(0.5)
        freed.append(alive() is None)

    if memory._TRIM is None:
        return
    gc.disable()  # the collector must not happen to run on its own during the test
    try:
        trims = trims_during(steps, collect=gc.collect)
    finally:
        gc.enable()
    assert trims and freed == [True]
