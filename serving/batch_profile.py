"""Where merging stops paying: a model's rows/s at each batch size on this device, and
how many instances to run at once.

A compute-bound model (the cats-vs-dogs convnet on a CPU) serves as many rows per second
at batch 8 as at 256: merging more requests into one run only makes them wait for each
other. A cheap one (the MNIST convnet) keeps gaining up to large batches. The profile
runs the model with zero inputs at powers of two up to max_batch_size, timing each
size's median run, and keeps as preferred batch sizes those up to the first one within
5% of the best rate; the dynamic batcher merges no further than the largest of them.

It then runs that size as N instances at once (N sessions, each with cores/N intra-op
threads, N = 1, 2, 4, ... cores) and keeps the fewest instances within 5% of the best.

`deepr export --profile-batches` writes the result into config.pbtxt: preferred_batch_size,
instance_group, and the measured curve as JSON in the `deepr.batch_profile` parameter. A
config with parameter `deepr.profile_batches: "true"` is profiled when it loads instead
(batch sizes only: its instances are already running), and the in-memory config, which
the ModelConfig RPC returns, carries the result.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .grpc._generated import model_config_pb2 as mc

if TYPE_CHECKING:
    from .model import OnnxModel

__all__ = ["BatchProfile", "profile_batches", "profile_at_load", "candidate_sizes", "PROFILE_PARAMETER",
           "PROFILE_AT_LOAD_PARAMETER", "PROFILE_SECONDS_AT_LOAD", "WITHIN"]

PROFILE_PARAMETER = "deepr.batch_profile"
PROFILE_AT_LOAD_PARAMETER = "deepr.profile_batches"
PROFILE_SECONDS_AT_LOAD = 0.2
"""Time per batch size when profiling at load (each size runs at least three times)."""
WITHIN = 0.05
"""A rate within this fraction of the best counts as the best: bigger batches or more
instances must gain more than this to be kept."""


def candidate_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below max_batch_size, and max_batch_size."""
    return tuple(sorted({*(2**i for i in range(max_batch_size.bit_length()) if 2**i < max_batch_size), max_batch_size}))


def profile_at_load(config: mc.ModelConfig) -> bool:
    param = config.parameters.get(PROFILE_AT_LOAD_PARAMETER)
    return (param is not None and param.string_value.lower() in ("true", "1", "yes")
            and config.max_batch_size > 0 and config.HasField("dynamic_batching"))


@dataclass(frozen=True)
class BatchProfile:
    device: str
    cores: int
    rows_per_s: dict[int, float]
    """One instance, all cores: rows per second at each batch size."""
    instances_rows_per_s: dict[int, float] = field(default_factory=dict)
    """At best_size: rows per second with N instances running at once, for each N measured."""

    @property
    def best_size(self) -> int:
        """The smallest batch size within WITHIN of the best rate."""
        top = max(self.rows_per_s.values())
        return min(s for s, rate in self.rows_per_s.items() if rate >= (1 - WITHIN) * top)

    @property
    def preferred_sizes(self) -> tuple[int, ...]:
        return tuple(s for s in sorted(self.rows_per_s) if s <= self.best_size)

    @property
    def instances(self) -> int:
        """The fewest instances within WITHIN of the best rate (1 when not measured)."""
        if not self.instances_rows_per_s:
            return 1
        top = max(self.instances_rows_per_s.values())
        return min(n for n, rate in self.instances_rows_per_s.items() if rate >= (1 - WITHIN) * top)

    def write_into(self, config: mc.ModelConfig, *, instances: bool = True) -> None:
        """Preferred batch sizes, the instance count (when `instances`), and the curve."""
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(self.preferred_sizes)
        if instances and self.instances_rows_per_s:
            del config.instance_group[:]
            kind = mc.ModelInstanceGroup.KIND_GPU if self.device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
            config.instance_group.add(count=self.instances, kind=kind)
        config.parameters[PROFILE_PARAMETER].string_value = self.to_json()

    def to_json(self) -> str:
        return json.dumps({
            "device": self.device, "cores": self.cores,
            "rows_per_s": {str(s): round(r, 1) for s, r in sorted(self.rows_per_s.items())},
            "instances_rows_per_s": {str(n): round(r, 1) for n, r in sorted(self.instances_rows_per_s.items())},
        })

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> "BatchProfile | None":
        """The profile a config carries, or None (no parameter, or one deepr cannot read)."""
        param = config.parameters.get(PROFILE_PARAMETER)
        if param is None:
            return None
        try:
            data = json.loads(param.string_value)
            return cls(str(data["device"]), int(data["cores"]), {int(s): float(r) for s, r in data["rows_per_s"].items()},
                       {int(n): float(r) for n, r in data.get("instances_rows_per_s", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def table(self) -> str:
        """The curve as text: rows/s per batch size, then per instance count."""
        top = max(self.rows_per_s.values())
        lines = [f"batch profile on {self.device}, {self.cores} cores (preferred sizes: "
                 f"{', '.join(map(str, self.preferred_sizes))})",
                 f"{'batch':>7} {'rows/s':>10} {'of best':>8}"]
        lines += [f"{s:>7} {r:>10.1f} {r / top:>8.0%}{'  <- merges stop here' if s == self.best_size else ''}"
                  for s, r in sorted(self.rows_per_s.items())]
        if self.instances_rows_per_s:
            lines.append(f"{'instances':>9} {'threads':>7} {'rows/s':>10}   (batch {self.best_size})")
            lines += [f"{n:>9} {max(1, self.cores // n):>7} {r:>10.1f}{'  <- chosen' if n == self.instances else ''}"
                      for n, r in sorted(self.instances_rows_per_s.items())]
        return "\n".join(lines)


def _median_rate(run: Callable[[], object], rows: int, seconds: float) -> float:
    """rows / the median time of warm runs, over at least three runs and `seconds`."""
    run()  # a first run at a new size pays for memory planning
    times: list[float] = []
    until = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < until and len(times) < 500):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return rows / statistics.median(times)


def _concurrent_rate(runs: list[Callable[[], object]], rows: int, seconds: float) -> float:
    """Rows per second with each of `runs` called back to back in its own thread."""
    for run in runs:
        run()
    done = [0] * len(runs)
    start = time.perf_counter()
    until = start + seconds

    def loop(i: int) -> None:
        while done[i] < 3 or time.perf_counter() < until:
            runs[i]()
            done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) * rows / (time.perf_counter() - start)


def profile_batches(model: "OnnxModel", *, seconds_per_size: float = 0.5, instances: bool = False,
                    progress: Callable[[str], None] = lambda line: None) -> BatchProfile:
    """Measure a loaded model's rows/s at each candidate batch size with zero inputs and,
    with `instances`, at the best size with 1, 2, 4, ... instances sharing the cores."""
    from .model import usable_cores

    if model.zero_inputs(1) is None:
        raise ValueError(f"{model.name}: its inputs have free dimensions, so there is no fixed-size batch to profile")
    sizes = candidate_sizes(model.max_batch_size)
    rates: dict[int, float] = {}
    # Two passes, up then down, keeping each size's better rate: on a shared machine noise
    # only ever slows a run, and a slow spell then cannot bend the curve at one end.
    for size in (*sizes, *reversed(sizes)):
        inputs = model.zero_inputs(size)
        rate = _median_rate(lambda: model.predict(inputs), size, seconds_per_size / 2)
        rates[size] = max(rate, rates.get(size, 0.0))
        progress(f"batch {size}: {rate:.1f} rows/s")
    cores = usable_cores()
    device = "cuda" if model.providers[0] == "CUDAExecutionProvider" else "cpu"
    profile = BatchProfile(device, cores, rates)
    if not instances:
        return profile
    size = profile.best_size
    inputs = model.zero_inputs(size)
    layouts = {n: [model.new_session(max(1, cores // n)) for _ in range(n)] for n in candidate_sizes(cores)}
    by_count: dict[int, float] = {}
    for _ in range(3):  # layouts take turns, so a slow spell does not land on one of them only
        for count, sessions in layouts.items():
            rate = _concurrent_rate([lambda s=s: s.run(None, inputs) for s in sessions], size, seconds_per_size)
            by_count[count] = max(rate, by_count.get(count, 0.0))
            progress(f"{count} instances x {max(1, cores // count)} threads at batch {size}: {rate:.1f} rows/s")
    return BatchProfile(device, cores, rates, by_count)
