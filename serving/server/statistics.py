"""Per-model inference statistics, as the V2 statistics extension reports them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["Duration", "ModelStatistics", "StatisticsRegistry"]


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class ModelStatistics:
    """Counts and cumulative nanoseconds for one model version."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    """Examples (batch rows) inferred successfully."""
    execution_count: int = 0
    """onnxruntime runs."""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    """Waiting for a free inference thread."""
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)
    """onnxruntime runs by batch size (rows, padding included), with their compute time."""
    cold_runs: int = 0
    """Runs at a batch size this model had not run before (not warmed at load)."""


class StatisticsRegistry:
    """Thread-safe statistics for every model version that has been asked for inference."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], ModelStatistics] = {}

    def _get(self, name: str, version: str) -> ModelStatistics:
        key = (name, version)
        if key not in self._stats:
            self._stats[key] = ModelStatistics(name, version)
        return self._stats[key]

    def record_success(
        self,
        name: str,
        version: str,
        *,
        batch: int,
        total_ns: int,
        input_ns: int,
        queue_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        with self._lock:
            stats = self._get(name, version)
            stats.success.add(total_ns)
            stats.compute_input.add(input_ns)
            stats.queue.add(queue_ns)
            stats.compute_infer.add(infer_ns)
            stats.compute_output.add(output_ns)
            stats.inference_count += batch
            stats.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(self, name: str, version: str, *, batch_size: int, infer_ns: int, cold: bool = False) -> None:
        """One onnxruntime run, which may have served several requests (dynamic batching)."""
        with self._lock:
            stats = self._get(name, version)
            stats.execution_count += 1
            stats.cold_runs += cold
            stats.batches.setdefault(batch_size, Duration()).add(infer_ns)

    def record_failure(self, name: str, version: str, total_ns: int) -> None:
        with self._lock:
            self._get(name, version).fail.add(total_ns)

    def snapshot(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Copies of the statistics, for one model (and version) or all."""
        import copy

        with self._lock:
            return [
                copy.deepcopy(s)
                for (n, v), s in sorted(self._stats.items())
                if (not name or n == name) and (not version or v == version)
            ]
