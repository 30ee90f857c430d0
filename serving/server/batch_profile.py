"""Where merging stops paying: a model's rows/s at each batch size on this device.

A compute-bound model (the cats-vs-dogs convnet on a CPU) serves about as many rows per
second at batch 16 as at 256: merging more requests into one run only makes them wait
for each other. A cheap one (the MNIST convnet) keeps gaining up to large batches,
because every served run also pays a fixed cost beyond onnxruntime's own time (handing
the run to a worker thread and back, merging and splitting tensors, and on a busy server
waiting for the interpreter lock): SERVED_RUN_COST_S, measured through `deepr bench`.

The profile runs the model with zero inputs at powers of two up to max_batch_size, takes
each size's median run time t, and rates it as served: size / (t + SERVED_RUN_COST_S).
The preferred batch sizes are those up to the first within 5% of the best served rate;
the dynamic batcher merges no further than the largest of them.

`deepr export --profile-batches` writes the result into config.pbtxt: preferred_batch_size,
and the measured curve as JSON in the `deepr.batch_profile` parameter. A config with
parameter `deepr.profile_batches: "true"` is profiled when it loads instead, and the
in-memory config, which the ModelConfig RPC returns, carries the result.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import numpy as np

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import BATCH_PROFILE_KEY, PROFILE_BATCHES_KEY
from serving.runtime.sessions import usable_cores

__all__ = [
    "BatchProfile",
    "profile_batches",
    "profile_at_load",
    "candidate_sizes",
    "BATCH_PROFILE_KEY",
    "PROFILE_BATCHES_KEY",
    "PROFILE_SECONDS_AT_LOAD",
    "SERVED_RUN_COST_S",
    "WITHIN",
]

PROFILE_SECONDS_AT_LOAD = 0.2
"""Time per batch size when profiling at load (each size runs at least three times)."""
WITHIN = 0.05
"""A rate within this fraction of the best counts as the best: a bigger batch must gain
more than this to be worth merging to."""
SERVED_RUN_COST_S = 0.002
"""What one served run costs beyond onnxruntime's time. On 2 CPU cores under `deepr bench`
load (client on the same cores), catsdogs runs of 2 rows gave 195 rows/s served against
328 in-process: 10.2 ms per run against 6.1, 4 ms more; 2 ms is the lower end of what
the bench showed, so merging is cut short only where it clearly stops paying."""


def candidate_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below max_batch_size, and max_batch_size."""
    return tuple(sorted({*(2**i for i in range(max_batch_size.bit_length()) if 2**i < max_batch_size), max_batch_size}))


def profile_at_load(config: mc.ModelConfig) -> bool:
    param = config.parameters.get(PROFILE_BATCHES_KEY)
    return (
        param is not None
        and param.string_value.lower() in ("true", "1", "yes")
        and config.max_batch_size > 0
        and config.HasField("dynamic_batching")
    )


@dataclass(frozen=True)
class BatchProfile:
    device: str
    cores: int
    rows_per_s: dict[int, float]
    """onnxruntime alone: rows per second at each batch size."""
    run_cost_s: float = SERVED_RUN_COST_S

    def served_rows_per_s(self, size: int) -> float:
        """The rate at `size` once each run also pays the served run cost."""
        return size / (size / self.rows_per_s[size] + self.run_cost_s)

    @property
    def best_size(self) -> int:
        """The smallest batch size within WITHIN of the best served rate."""
        served = {s: self.served_rows_per_s(s) for s in self.rows_per_s}
        top = max(served.values())
        return min(s for s, rate in served.items() if rate >= (1 - WITHIN) * top)

    @property
    def preferred_sizes(self) -> tuple[int, ...]:
        return tuple(s for s in sorted(self.rows_per_s) if s <= self.best_size)

    def write_into(self, config: mc.ModelConfig) -> None:
        """The preferred batch sizes, and the curve as a parameter."""
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(self.preferred_sizes)
        config.parameters[BATCH_PROFILE_KEY].string_value = self.to_json()

    def to_json(self) -> str:
        return json.dumps(
            {
                "device": self.device,
                "cores": self.cores,
                "run_cost_s": self.run_cost_s,
                "rows_per_s": {str(s): round(r, 1) for s, r in sorted(self.rows_per_s.items())},
            }
        )

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> "BatchProfile | None":
        """The profile a config carries, or None (no parameter, or one deepr cannot read)."""
        param = config.parameters.get(BATCH_PROFILE_KEY)
        if param is None:
            return None
        try:
            data = json.loads(param.string_value)
            rates = {int(s): float(r) for s, r in data["rows_per_s"].items()}
            return cls(str(data["device"]), int(data["cores"]), rates, float(data.get("run_cost_s", SERVED_RUN_COST_S)))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def table(self) -> str:
        """The curve as text: rows/s per batch size, alone and as served."""
        top = max(self.served_rows_per_s(s) for s in self.rows_per_s)
        lines = [
            f"batch profile on {self.device}, {self.cores} cores (preferred sizes: "
            f"{', '.join(map(str, self.preferred_sizes))}; served: + {self.run_cost_s * 1e3:g} ms per run)",
            f"{'batch':>7} {'rows/s':>10} {'served':>10} {'of best':>8}",
        ]
        for size, rate in sorted(self.rows_per_s.items()):
            served = self.served_rows_per_s(size)
            mark = "  <- merges stop here" if size == self.best_size else ""
            lines.append(f"{size:>7} {rate:>10.1f} {served:>10.1f} {served / top:>8.0%}{mark}")
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


class Profiled(Protocol):
    """What profiling needs of a loaded model (OnnxModel is one)."""

    @property
    def name(self) -> str: ...

    @property
    def max_batch_size(self) -> int: ...

    @property
    def providers(self) -> list[str]: ...

    def zero_inputs(self, rows: int) -> dict[str, np.ndarray] | None: ...

    def predict(self, inputs: Mapping[str, np.ndarray]) -> object: ...


def profile_batches(
    model: Profiled, *, seconds_per_size: float = 0.5, progress: Callable[[str], None] = lambda line: None
) -> BatchProfile:
    """Measure a loaded model's rows/s at each candidate batch size with zero inputs."""
    if model.zero_inputs(1) is None:
        raise ValueError(f"{model.name}: its inputs have free dimensions, so there is no fixed-size batch to profile")
    sizes = candidate_sizes(model.max_batch_size)
    rates: dict[int, float] = {}
    # Two passes, up then down, keeping each size's better rate: on a shared machine noise
    # only ever slows a run, and a slow spell then cannot bend the curve at one end.
    for size in (*sizes, *reversed(sizes)):
        inputs = model.zero_inputs(size) or {}  # not None: the first size had fixed dimensions
        rate = _median_rate(lambda: model.predict(inputs), size, seconds_per_size / 2)
        rates[size] = max(rate, rates.get(size, 0.0))
        progress(f"batch {size}: {rate:.1f} rows/s")
    device = "cuda" if model.providers[0] == "CUDAExecutionProvider" else "cpu"
    return BatchProfile(device, usable_cores(), rates)
