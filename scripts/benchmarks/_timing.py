"""Shared by the benchmark scripts: the median wall time of a call, after one warm-up call."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first runs allocate and pick kernels
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
