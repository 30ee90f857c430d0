"""Prometheus metrics: Triton's names, counting exactly what was sent, and agreeing with
ModelStatistics."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_what_was_sent(repository):
    with serve_in_thread(ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        assert server.metrics_port > 0
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        for batch in (1, 4, 7):
            tensor = triton.InferInput("images", [batch, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(np.zeros((batch, 1, 28, 28), np.float32))
            client.infer("mnist_convnet", [tensor])
        with pytest.raises(InferenceServerException):
            client.infer(
                "mnist_convnet",
                [triton.InferInput("images", [1, 784], "FP32").set_data_from_numpy(np.zeros((1, 784), np.float32))],
            )
        metrics = scrape(server.metrics_port)
        stats = client.get_inference_statistics("mnist_convnet").model_stats[0]
        client.close()
    labels = (("model", "mnist_convnet"), ("version", "1"))
    assert metrics["nv_inference_request_success", labels] == 3 == stats.inference_stats.success.count
    assert metrics["nv_inference_request_failure", labels] == 1 == stats.inference_stats.fail.count
    assert metrics["nv_inference_count", labels] == 12 == stats.inference_count
    assert metrics["nv_inference_exec_count", labels] == 3 == stats.execution_count
    assert metrics["nv_inference_compute_infer_duration_us", labels] == pytest.approx(
        stats.inference_stats.compute_infer.ns / 1e3
    )
    assert (
        metrics["nv_inference_request_duration_us", labels]
        >= metrics["nv_inference_compute_infer_duration_us", labels]
        > 0
    )
    # runs of 1, 4 and 8 rows: 7 padded to the warmed size 8, so no run was cold
    assert metrics["deepr_batch_size_count", labels] == 3 and metrics["deepr_batch_size_sum", labels] == 13
    assert metrics["deepr_batch_size_bucket", (("le", "4"),) + labels] == 2
    assert metrics["deepr_cold_run_count", labels] == 0
    assert ("nv_inference_request_success", (("model", "mnist_dense"), ("version", "1"))) not in metrics  # never asked


def test_metrics_can_be_turned_off(repository):
    with serve_in_thread(
        ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        assert server.metrics_port == 0
    with pytest.raises(ValueError, match="metrics_port must be in -1..65535"):
        ServerSettings(metrics_port=70000)


def test_failed_requests_are_logged_with_their_id(server_url):
    import json
    import logging

    from serving.server.logs import JsonFormatter

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append

    client = triton.InferenceServerClient(server_url)
    tensor = triton.InferInput("images", [1, 3, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 28, 28), np.float32))
    logger = logging.getLogger("serving.server.dataplane")
    logger.addHandler(handler)
    try:
        with pytest.raises(InferenceServerException):
            client.infer("mnist_convnet", [tensor], request_id="req-42")
    finally:
        logger.removeHandler(handler)
        client.close()
    (record,) = [r for r in records if getattr(r, "request_id", None) == "req-42"]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "serving.server.dataplane"
    assert (entry["request_id"], entry["model"], entry["status"]) == ("req-42", "mnist_convnet", "INVALID_ARGUMENT")
    assert entry["duration_ms"] >= 0 and "request req-42 for mnist_convnet failed: INVALID_ARGUMENT" in entry["message"]
