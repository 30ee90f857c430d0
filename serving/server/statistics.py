"""Per-model inference statistics, as the V2 statistics extension reports them."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["Duration", "ModelStatistics", "StatisticsRegistry", "summed", "at_least"]

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_COUNTS = ("inference_count", "execution_count", "cold_runs")


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

    def to_json(self) -> dict:
        document = dataclasses.asdict(self)
        document["batches"] = {str(size): [d.count, d.ns] for size, d in self.batches.items()}
        for name in _DURATIONS:
            document[name] = [getattr(self, name).count, getattr(self, name).ns]
        return document

    @classmethod
    def from_json(cls, document: dict) -> "ModelStatistics":
        stats = cls(document["name"], document["version"], document.get("last_inference_ms", 0))
        for name in _COUNTS:
            setattr(stats, name, int(document.get(name, 0)))
        for name in _DURATIONS:
            setattr(stats, name, Duration(*document.get(name, (0, 0))))
        stats.batches = {int(size): Duration(*d) for size, d in document.get("batches", {}).items()}
        return stats

    def add(self, other: "ModelStatistics") -> None:
        """Add `other`'s counts and times to these (the same model version elsewhere)."""
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in _DURATIONS:
            mine, theirs = getattr(self, name), getattr(other, name)
            mine.count += theirs.count
            mine.ns += theirs.ns
        for size, d in other.batches.items():
            slot = self.batches.setdefault(size, Duration())
            slot.count += d.count
            slot.ns += d.ns


def summed(parts: Iterable[Iterable[ModelStatistics]]) -> list[ModelStatistics]:
    """Per model version, the sums over `parts` (several processes' statistics), sorted."""
    total: dict[tuple[str, str], ModelStatistics] = {}
    for part in parts:
        for one in part:
            key = (one.name, one.version)
            if key in total:
                total[key].add(one)
            else:
                total[key] = copy.deepcopy(one)
    return [total[k] for k in sorted(total)]


def at_least(floor: Iterable[ModelStatistics], current: Iterable[ModelStatistics]) -> list[ModelStatistics]:
    """`current` with no count or time below `floor`'s (what was reported before): a
    process's last moments before a crash are lost to its statistics, and a counter that
    went down would read as a reset to Prometheus."""
    lowest = {(s.name, s.version): s for s in floor}
    result = []
    for stats in current:
        stats = copy.deepcopy(stats)
        before = lowest.pop((stats.name, stats.version), None)
        if before is not None:
            stats.last_inference_ms = max(stats.last_inference_ms, before.last_inference_ms)
            for name in _COUNTS:
                setattr(stats, name, max(getattr(stats, name), getattr(before, name)))
            for name in _DURATIONS:
                mine, theirs = getattr(stats, name), getattr(before, name)
                mine.count, mine.ns = max(mine.count, theirs.count), max(mine.ns, theirs.ns)
            for size, d in before.batches.items():
                slot = stats.batches.setdefault(size, Duration())
                slot.count, slot.ns = max(slot.count, d.count), max(slot.ns, d.ns)
        result.append(stats)
    result += [copy.deepcopy(s) for s in lowest.values()]  # a model no process reports any more
    return sorted(result, key=lambda s: (s.name, s.version))


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

    def absorb(self, baseline: Iterable[ModelStatistics]) -> None:
        """Start from `baseline`: the counts of the process this one replaces."""
        with self._lock:
            for stats in baseline:
                self._get(stats.name, stats.version).add(stats)

    def snapshot(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Copies of the statistics, for one model (and version) or all."""
        with self._lock:
            return [
                copy.deepcopy(s)
                for (n, v), s in sorted(self._stats.items())
                if (not name or n == name) and (not version or v == version)
            ]
