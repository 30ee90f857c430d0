"""The dataplane's own accounting: a request that its client cancels while onnxruntime runs it
keeps the server busy (so the idle trimmer waits) and is counted when its run ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np

from exporters.repository import add_to_repository, serving_config
from serving.protocol.generated import model_config_pb2 as mc
from serving.server.dataplane import DataPlane
from serving.server.repository import ModelRepository
from serving.server.settings import ServerSettings
from tests.chaos.probes import doubling_graph


def test_a_cancelled_request_keeps_the_server_busy_until_its_run_ends(tmp_path):
    repository = tmp_path / "repository"
    config = serving_config("alone", 0)  # not batched: each request runs alone
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[1, 4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[1, 4])
    add_to_repository(repository, config, doubling_graph(tmp_path / "alone.onnx", 4))
    settings = ServerSettings(repository=repository, device="cpu", port=0, http_port=-1, metrics_port=-1)
    dataplane = DataPlane(ModelRepository(repository, settings.runtime(), settings.completion()), settings)
    dataplane.start()
    model = dataplane.model("alone")
    release, running = threading.Event(), threading.Event()
    predict = model.predict

    def held_predict(*args, **kwargs):
        running.set()
        release.wait(10)
        return predict(*args, **kwargs)

    model.predict = held_predict  # type: ignore[method-assign]

    async def scenario() -> None:
        request = asyncio.create_task(dataplane.infer(model, {"x": np.ones((1, 4), np.float32)}, []))
        while not running.is_set():
            await asyncio.sleep(0.01)
        request.cancel()  # the client left; onnxruntime goes on
        with contextlib.suppress(asyncio.CancelledError):
            await request
        assert dataplane.busy(), "idle while a run is in progress"
        release.set()
        deadline = time.monotonic() + 5
        while dataplane.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not dataplane.busy()
        await dataplane.close()

    asyncio.run(scenario())
    (stats,) = dataplane.statistics.snapshot("alone")
    assert stats.execution_count == 1, "the run that served nobody was not counted"
