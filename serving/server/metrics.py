"""Prometheus metrics on an HTTP port, under Triton's metric names.

The values are read from the server's statistics at scrape time, so the metrics and
ModelStatistics always agree and requests pay nothing extra. Triton's cumulative
counters keep their exact names (`nv_inference_request_success`, not `..._total`) so
dashboards written for Triton work unchanged; prometheus_client would append `_total`
to a counter, hence they are exposed untyped. deepr adds a histogram of the rows per
onnxruntime run (`deepr_batch_size`), which shows dynamic batching at work.

The port that serves them is serving/server/metrics_http.py.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from serving.server.statistics import ModelStatistics, StatisticsRegistry

__all__ = ["StatisticsCollector", "BATCH_BUCKETS"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Triton's name -> (help, value from one model version's statistics)
_CUMULATIVE: dict[str, tuple[str, Callable[[ModelStatistics], float]]] = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    "nv_inference_request_failure": ("Number of failed inference requests, all batch sizes", lambda s: s.fail.count),
    "nv_inference_count": ("Number of inferences performed (rows of successful requests)", lambda s: s.inference_count),
    "nv_inference_exec_count": ("Number of model executions performed (onnxruntime runs)", lambda s: s.execution_count),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds",
        lambda s: s.success.ns / 1e3,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns / 1e3,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns / 1e3,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns / 1e3,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds",
        lambda s: s.compute_output.ns / 1e3,
    ),
    "deepr_cold_run_count": (
        "onnxruntime runs at a batch size the model had not run before (not warmed at load)",
        lambda s: s.cold_runs,
    ),
}


Reading = tuple[list[ModelStatistics], dict[tuple[str, str], int]]
"""What a scrape reads: every model version's statistics, and the requests queued for each."""


class StatisticsCollector:
    """A prometheus_client collector over a server's statistics and request queues."""

    def __init__(self, read: Callable[[], Reading]) -> None:
        """`read`: this process's statistics and queues (`of`), or a whole server's."""
        self.read = read

    @classmethod
    def of(cls, statistics: StatisticsRegistry, pending: Callable[[], dict[tuple[str, str], int]] = dict):
        return cls(lambda: (statistics.snapshot(), pending()))

    def collect(self) -> Iterator[Metric]:
        snapshot, queued = self.read()
        for name, (help_text, value) in _CUMULATIVE.items():
            family = Metric(name, help_text, "unknown")
            for s in snapshot:
                family.add_sample(name, {"model": s.name, "version": s.version}, value(s))
            yield family
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution",
            labels=["model", "version"],
        )
        for (model, version), count in sorted(queued.items()):
            pending.add_metric([model, version], count)
        yield pending
        batches = HistogramMetricFamily(
            "deepr_batch_size",
            "Rows per onnxruntime run (dynamic batching merges requests)",
            labels=["model", "version"],
        )
        for s in snapshot:
            if s.batches:
                batches.add_metric(
                    [s.name, s.version], _buckets(s), sum_value=sum(size * d.count for size, d in s.batches.items())
                )
        yield batches
        yield from _gpu_memory()


def _buckets(stats: ModelStatistics) -> list[tuple[str, float]]:
    cumulative: list[tuple[str, float]] = []
    for bound in BATCH_BUCKETS:
        cumulative.append((str(bound), sum(d.count for size, d in stats.batches.items() if size <= bound)))
    cumulative.append(("+Inf", sum(d.count for d in stats.batches.values())))
    return cumulative


def _gpu_memory() -> Iterator[Metric]:
    """GPU memory per device, as Triton reports it, where NVML (nvidia-ml-py) is installed."""
    try:
        import pynvml
    except ImportError:
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"])
    used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"])
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        total.add_metric([uuid], memory.total)
        used.add_metric([uuid], memory.used)
    yield total
    yield used
