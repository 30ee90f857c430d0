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


def trims_during(steps) -> list[int]:
    """Runs the trimmer (idle after 20 ms) while `steps(dataplane, resident)` changes what it
    sees; returns the resident size at each trim."""
    resident = [100 * 2**20]
    trims: list[int] = []

    def release() -> bool:
        trims.append(resident[0])
        return True

    async def main() -> None:
        dataplane = QuietDataplane()
        # fakes passed in, not patched into the module: a server of another test may be trimming
        trimmer = asyncio.create_task(
            memory.trim_when_idle(dataplane, 0.02, release=release, resident=lambda: resident[0])
        )
        await asyncio.sleep(0.01)  # the trimmer takes its starting point
        await steps(dataplane, resident)
        trimmer.cancel()

    if memory._TRIM is not None:
        asyncio.run(main())
    return trims


def test_an_untouched_server_never_trims():
    async def steps(dataplane, resident):
        await asyncio.sleep(0.5)

    assert trims_during(steps) == []


def test_new_requests_trim_once_then_rest():
    async def steps(dataplane, resident):
        dataplane.admission.admitted = 5
        await asyncio.sleep(0.5)

    if memory._TRIM is not None:
        assert trims_during(steps) == [100 * 2**20]


def test_memory_grown_without_requests_is_trimmed_again():
    """Calls that time out before admission leave their messages to be freed later."""

    async def steps(dataplane, resident):
        dataplane.admission.admitted = 5
        await asyncio.sleep(0.5)
        resident[0] = 600 * 2**20  # grown past the margin with no new request
        await asyncio.sleep(0.5)
        resident[0] = 610 * 2**20  # within the margin of the size after that trim
        await asyncio.sleep(0.5)

    if memory._TRIM is not None:
        assert trims_during(steps) == [100 * 2**20, 600 * 2**20]
