"""`deepr serve --workers 2`: one server to its clients. Each check goes through 32 fresh
connections, which the kernel spreads over the workers, and fails if any worker is left out
of what the server as a whole was asked to do."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .probes import ServerProcess, add_doubling_model, wait_until

CONNECTIONS = 32


@pytest.fixture()
def workers(tmp_path):
    repository = tmp_path / "repository"
    add_doubling_model(repository, "double")
    add_doubling_model(repository, "other")
    server = ServerProcess(repository, "--workers", "2", "--metrics-port", "0")
    assert wait_until(lambda: ready(server), 30), server.log_text()  # every worker up: readiness says so
    yield server
    server.stop()


def ready(server: ServerProcess) -> bool:
    client = fresh(server.url)
    try:
        return client.is_server_ready()
    except triton.InferenceServerException:
        return False
    finally:
        client.close()


def sockets(server: ServerProcess) -> list[str]:
    assert wait_until(lambda: "their sockets in" in server.log_text(), 10)
    folder = re.search(r"their sockets in (\S+)", server.log_text()).group(1)
    return [f"unix:{folder}/worker-{i}.sock" for i in range(2)]


def fresh(url: str):
    """A client on a connection of its own (grpc would otherwise share one per address)."""
    return triton.InferenceServerClient(url, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def infer(client, model: str, region: str | None = None) -> str:
    x = triton.InferInput("x", [1, 4], "FP32")
    if region is None:
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
    else:
        x.set_shared_memory(region, 16)
    try:
        client.infer(model, [x])
        return "OK"
    except triton.InferenceServerException as error:
        return error.status()


def on_fresh_connections(server: ServerProcess, ask) -> list:
    answers = []
    for _ in range(CONNECTIONS):
        client = fresh(server.url)
        answers.append(ask(client))
        client.close()
    return answers


def per_worker_successes(server: ServerProcess, model: str) -> list[int]:
    """Each worker's own count, asked over its private socket (answered by it alone)."""
    counts = []
    for address in sockets(server):
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=model), timeout=10)
            counts.append(sum(s.inference_stats.success.count for s in stats.model_stats))
    return counts


def test_connections_are_spread_and_statistics_and_metrics_are_the_whole_servers(workers):
    assert on_fresh_connections(workers, lambda c: infer(c, "double")) == ["OK"] * CONNECTIONS
    spread = per_worker_successes(workers, "double")
    assert sum(spread) == CONNECTIONS and min(spread) > 0, spread  # the kernel used both
    totals = on_fresh_connections(
        workers, lambda c: c.get_inference_statistics("double").model_stats[0].inference_stats.success.count
    )
    assert totals == [CONNECTIONS] * CONNECTIONS
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{workers.metrics_port}/metrics", timeout=10).read().decode()
    assert f'nv_inference_request_success{{model="double",version="1"}} {float(CONNECTIONS)}' in metrics


def test_unload_and_load_through_one_connection_reach_every_worker(workers):
    client = fresh(workers.url)
    client.unload_model("other")
    client.close()
    assert on_fresh_connections(workers, lambda c: infer(c, "other")) == ["StatusCode.UNAVAILABLE"] * CONNECTIONS
    client = fresh(workers.url)
    client.load_model("other")
    client.close()
    assert on_fresh_connections(workers, lambda c: infer(c, "other")) == ["OK"] * CONNECTIONS


def test_the_index_is_the_whole_servers(workers):
    """A model unloaded in one worker alone (through its private socket) is not READY in the
    index any client sees, which names the worker."""
    with grpc.insecure_channel(sockets(workers)[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="other"), timeout=30)
    states = on_fresh_connections(
        workers, lambda c: {m.name: (m.state, m.reason) for m in c.get_model_repository_index().models}["other"]
    )
    assert states == [("UNAVAILABLE", "worker 1: unloaded by request")] * CONNECTIONS


def test_a_shared_memory_region_registered_once_serves_every_connection(workers):
    region = shared_memory.SharedMemory(create=True, size=16)
    try:
        np.ndarray((4,), np.float32, buffer=region.buf)[:] = [1, 2, 3, 4]
        client = fresh(workers.url)
        client.register_system_shared_memory("input", "/" + region.name, 16)
        client.close()
        assert on_fresh_connections(workers, lambda c: infer(c, "double", "input")) == ["OK"] * CONNECTIONS
        status = on_fresh_connections(workers, lambda c: sorted(c.get_system_shared_memory_status().regions))
        assert status == [["input"]] * CONNECTIONS
        client = fresh(workers.url)
        client.unregister_system_shared_memory("input")
        client.close()
        refused = on_fresh_connections(workers, lambda c: infer(c, "double", "input"))
        assert refused == ["StatusCode.INVALID_ARGUMENT"] * CONNECTIONS
    finally:
        region.close()
        region.unlink()


def test_a_dead_worker_is_restarted_takes_the_servers_state_and_readiness_waits_for_it(workers):
    client = fresh(workers.url)
    client.unload_model("other")
    client.close()
    pid = int(re.search(r"worker 1 started, pid (\d+)", workers.log_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    readiness = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        client = fresh(workers.url)
        try:
            readiness.append(client.is_server_ready())
        except triton.InferenceServerException:
            readiness.append(None)
        client.close()
        if readiness[-1] is True and False in readiness:
            break
        time.sleep(0.05)
    assert False in readiness and readiness[-1] is True, readiness  # not ready while a worker was down
    assert "worker 1 exited with status -9; starting it again" in workers.log_text()
    assert wait_until(lambda: re.search(r"worker 1: serving", workers.log_text().split("starting it again")[-1]), 30)
    assert on_fresh_connections(workers, lambda c: infer(c, "other")) == ["StatusCode.UNAVAILABLE"] * CONNECTIONS
    assert on_fresh_connections(workers, lambda c: infer(c, "double")) == ["OK"] * CONNECTIONS


@pytest.mark.parametrize(("cores", "workers", "threads"), [(2, 1, 2), (2, 2, 2), (16, 16, 2), (16, 4, 8), (4, 3, 2)])
def test_each_worker_may_use_twice_its_share_of_the_cores(cores, workers, threads):
    from serving.server.workers import intra_op_share

    assert intra_op_share(cores, workers) == threads
