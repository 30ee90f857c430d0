"""The server's logic, independent of the transport: health, metadata, inference."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import __version__
from .classification import top_k_strings
from .errors import InvalidInput, ModelNotFound
from .grpc._generated import model_config_pb2 as mc
from .model import OnnxModel
from .repository import READY, ModelRepository
from .settings import ServerSettings
from .statistics import StatisticsRegistry

__all__ = ["DataPlane", "RequestedOutput", "SERVER_NAME", "EXTENSIONS"]

SERVER_NAME = "deepr"
EXTENSIONS = ("classification", "model_configuration", "streaming", "statistics")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    class_count: int = 0
    """> 0: return the top `class_count` classes as BYTES instead of the tensor."""


class DataPlane:
    def __init__(self, repository: ModelRepository, settings: ServerSettings) -> None:
        self.repository = repository
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=settings.infer_threads, thread_name_prefix="deepr-infer")
        self.statistics = StatisticsRegistry()
        self._started = False

    def start(self) -> None:
        """Load every model in the repository; failures leave that model UNAVAILABLE."""
        self.repository.load_all()
        self._started = True

    def stop(self) -> None:
        self._executor.shutdown(wait=True)

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self._started:
            return False
        if self.settings.strict_readiness:
            return all(e.state == READY for e in self.repository.entries())
        return True

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS

    def model(self, name: str, version: str = "") -> OnnxModel:
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for unknown models too: readiness probes ask, they should not fail."""
        try:
            entry = self.repository.entry(name)
        except ModelNotFound:
            return False
        return entry.state == READY and (not version or version in entry.versions)

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.model(name, version).config

    def model_versions(self, name: str) -> list[str]:
        return sorted(self.repository.entry(name).versions, key=int)

    async def infer(
        self, model: OnnxModel, inputs: dict[str, np.ndarray], requested: list[RequestedOutput], timings: dict[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `model` on decoded inputs in a worker thread; apply the classification extension.
        `timings` receives "queue_ns" (waiting for a thread) and "infer_ns" (onnxruntime)."""
        known = {o.name for o in model.outputs}
        unknown = [r.name for r in requested if r.name not in known]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; model {model.name!r} has {sorted(known)}")
        names = [r.name for r in requested] or None
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter_ns()
        started: list[int] = []

        def run() -> dict[str, np.ndarray]:
            started.append(time.perf_counter_ns())
            return model.predict(inputs, names)

        outputs = await loop.run_in_executor(self._executor, run)
        if timings is not None:
            timings["queue_ns"] = started[0] - submitted
            timings["infer_ns"] = time.perf_counter_ns() - started[0]
        labels = self.repository.entry(model.name).labels
        for r in requested:
            if r.class_count:
                outputs[r.name] = top_k_strings(outputs[r.name], r.class_count, labels.get(r.name), batched=model.max_batch_size > 0)
        return outputs
