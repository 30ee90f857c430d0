"""`deepr serve --workers 2`: one server to its clients. Each check goes through 32 fresh
connections, which the kernel spreads over the workers, and fails if any worker is left out
of what the server as a whole was asked to do."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from multiprocessing import shared_memory
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def registered_region(server: ServerProcess) -> Iterator[None]:
    """A region "input" of four float32 registered through one connection; freed on exit."""
    region = shared_memory.SharedMemory(create=True, size=16)
    try:
        np.ndarray((4,), np.float32, buffer=region.buf)[:] = [1, 2, 3, 4]
        client = fresh(server.url)
        client.register_system_shared_memory("input", "/" + region.name, 16)
        client.close()
        yield
    finally:
        region.close()
        region.unlink()


def test_a_shared_memory_region_registered_once_serves_every_connection(workers):
    with registered_region(workers):
        assert on_fresh_connections(workers, lambda c: infer(c, "double", "input")) == ["OK"] * CONNECTIONS
        status = on_fresh_connections(workers, lambda c: sorted(c.get_system_shared_memory_status().regions))
        assert status == [["input"]] * CONNECTIONS
        client = fresh(workers.url)
        client.unregister_system_shared_memory("input")
        client.close()
        refused = on_fresh_connections(workers, lambda c: infer(c, "double", "input"))
        assert refused == ["StatusCode.INVALID_ARGUMENT"] * CONNECTIONS


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


def pid_of(server: ServerProcess, worker: int, after: int = 0) -> int:
    """The pid of the `after`-th process started in `worker`'s place (0: the first)."""
    assert wait_until(lambda: len(re.findall(rf"worker {worker} started, pid", server.log_text())) > after, 30)
    pids = re.findall(rf"worker {worker} started, pid (\d+)", server.log_text())
    return int(pids[after])


def kill_and_wait_for_the_next(server: ServerProcess, worker: int, generation: int) -> None:
    os.kill(pid_of(server, worker, generation), signal.SIGKILL)
    pid_of(server, worker, generation + 1)  # started again
    assert wait_until(lambda: ready(server), 30), server.log_text()


def metric(server: ServerProcess, name: str, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_worker_killed_while_a_region_is_registered_comes_back_with_it(workers):
    with registered_region(workers):
        kill_and_wait_for_the_next(workers, 1, 0)
        time.sleep(2)  # the server dies within seconds where the restarted worker cannot take the region over
        assert workers.alive(), workers.log_text()
        assert on_fresh_connections(workers, lambda c: infer(c, "double", "input")) == ["OK"] * CONNECTIONS


def test_load_and_unload_at_the_same_moment_leave_every_worker_alike(workers):
    """Each round sends a load and an unload of one model at once, on connections of their
    own (so often through different workers); then every worker says whether it serves it."""
    split = []
    for round_ in range(16):
        calls = [lambda c: c.load_model("other"), lambda c: c.unload_model("other")]
        threads = [threading.Thread(target=lambda f=f: on_one_connection(workers, f)) for f in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        states = per_worker_ready(workers, "other")
        if len(set(states)) > 1:
            split.append((round_, states))
    assert split == [], f"rounds that left the workers split: {split}"


def on_one_connection(server: ServerProcess, ask) -> None:
    client = fresh(server.url)
    try:
        ask(client)
    finally:
        client.close()


def per_worker_ready(server: ServerProcess, model: str) -> list[bool]:
    answers = []
    for address in sockets(server):
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answers.append(stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=10).ready)
    return answers


def test_the_workers_end_with_their_parent_even_killed(tmp_path):
    repository = tmp_path / "repository"
    add_doubling_model(repository, "double")
    server = ServerProcess(repository, "--workers", "2")
    try:
        assert wait_until(lambda: ready(server), 30), server.log_text()
        children = [pid_of(server, w) for w in range(2)]
        folder = re.search(r"their sockets in (\S+)", server.log_text()).group(1)
        os.kill(server.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 15), server.log_text()
        assert not Path(folder).exists(), server.log_text()
        with socket.socket() as probe:  # the port is free for the next server
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", server.port))
    finally:
        server.stop()


def test_statistics_and_metrics_keep_a_dead_workers_counts(workers):
    assert on_fresh_connections(workers, lambda c: infer(c, "double")) == ["OK"] * CONNECTIONS
    assert metric(workers, "nv_inference_request_success", "double") == CONNECTIONS
    spread = per_worker_successes(workers, "double")
    assert spread[1] > 0, spread
    kill_and_wait_for_the_next(workers, 1, 0)
    assert metric(workers, "nv_inference_request_success", "double") == CONNECTIONS
    totals = on_fresh_connections(
        workers, lambda c: c.get_inference_statistics("double").model_stats[0].inference_stats.success.count
    )
    assert totals == [CONNECTIONS] * CONNECTIONS
    assert per_worker_successes(workers, "double")[1] >= spread[1]  # the new worker counts from its predecessor


def test_a_worker_that_keeps_dying_stays_down_alone(workers):
    for generation in range(2):
        kill_and_wait_for_the_next(workers, 1, generation)
    os.kill(pid_of(workers, 1, 2), signal.SIGKILL)
    assert wait_until(lambda: "worker 1 exited 3 times" in workers.log_text(), 10), workers.log_text()
    assert "it stays down and the server is not ready; the other workers serve" in workers.log_text()
    time.sleep(1)
    assert workers.alive()
    assert not ready(workers)
    assert on_fresh_connections(workers, lambda c: infer(c, "double")) == ["OK"] * CONNECTIONS
    text = urllib.request.urlopen(f"http://127.0.0.1:{workers.metrics_port}/metrics", timeout=10).read().decode()
    assert 'deepr_worker_up{worker="0"} 1.0' in text and 'deepr_worker_up{worker="1"} 0.0' in text


def test_a_hung_worker_is_killed_and_started_again(tmp_path):
    repository = tmp_path / "repository"
    add_doubling_model(repository, "double")
    server = ServerProcess(repository, "--workers", "2", "--worker-timeout", "2")
    try:
        assert wait_until(lambda: ready(server), 30), server.log_text()
        time.sleep(1.5)  # each worker has answered its parent once
        os.kill(pid_of(server, 1), signal.SIGSTOP)
        assert wait_until(lambda: "worker 1 (pid" in server.log_text(), 15), server.log_text()
        assert re.search(r"worker 1 \(pid \d+\) has not answered for [2-9] s", server.log_text())
        pid_of(server, 1, 1)
        assert wait_until(lambda: ready(server), 30), server.log_text()
    finally:
        server.stop()


def test_a_restarted_worker_answers_no_client_before_it_caught_up(workers):
    """`other` is unloaded; while worker 1 starts again (loading every model from the
    repository first), no connection gets `other` served."""
    on_one_connection(workers, lambda c: c.unload_model("other"))
    os.kill(pid_of(workers, 1), signal.SIGKILL)
    answers = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answers.append(on_fresh_connection(workers, lambda c: infer(c, "other")))
        if "worker 1: serving" in workers.log_text().split("starting it again")[-1] and len(answers) > 50:
            break
    assert "OK" not in answers, answers.count("OK")


def on_fresh_connection(server: ServerProcess, ask):
    client = fresh(server.url)
    try:
        return ask(client)
    finally:
        client.close()


def test_registering_a_name_already_registered_keeps_the_live_region(workers):
    """ALREADY_EXISTS, as from one process, and the region stays registered in every worker."""
    with registered_region(workers):
        client = fresh(workers.url)
        try:
            client.register_system_shared_memory("input", "/no_such_object", 16)
            raise AssertionError("a second registration of one name was accepted")
        except triton.InferenceServerException as error:
            assert error.status() == "StatusCode.ALREADY_EXISTS", error
        finally:
            client.close()
        assert on_fresh_connections(workers, lambda c: infer(c, "double", "input")) == ["OK"] * CONNECTIONS


def test_rest_is_served_on_the_socket_the_parent_bound_once(workers):
    """Every worker accepts on the one HTTP socket its parent bound (nothing else binds it)."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    for _ in range(CONNECTIONS):
        request = urllib.request.Request(f"{workers.http_url}/v2/models/double/infer", data=body.encode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["outputs"][0]["data"] == [2, 4, 6, 8]
    assert sum(per_worker_successes(workers, "double")) == CONNECTIONS
    listening = listening_sockets(workers.http_port)
    assert len(listening) == 1, listening  # one socket listens on the port...
    holders = [workers.proc.pid, *(pid_of(workers, w) for w in range(2))]
    assert all(listening[0] in sockets_of(pid) for pid in holders)  # ...held by the parent and each worker


def listening_sockets(port: int) -> list[str]:
    """The inodes of the TCP sockets listening on `port` (/proc/net/tcp: state 0A)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            found.append(fields[9])
    return found


def sockets_of(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes
