"""Hostile use of system shared memory by a client on the server's host: objects truncated
while requests read them, symbolic links, other users' objects, odd keys. The server answers
each with a status and goes on serving; it never dies and never writes outside the object."""

from __future__ import annotations

import os
import queue
import uuid
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from serving.server.shared_memory import SHM_DIR, is_local_peer

from .probes import WIDE

ROWS = 256


def wide_request(region_name: str, rows: int = ROWS) -> triton.InferInput:
    return triton.InferInput("x", [rows, WIDE], "FP32").set_shared_memory(region_name, rows * WIDE * 4)


def register_error(
    client: triton.InferenceServerClient, name: str, key: str, byte_size: int = 64
) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.register_system_shared_memory(name, key, byte_size=byte_size)
    return caught.value


def register_object_error(client: triton.InferenceServerClient, make) -> InferenceServerException:
    """Create an entry in /dev/shm with `make(path)`, try to register it, remove it."""
    path = SHM_DIR / f"deepr-probe-{uuid.uuid4().hex}"
    make(path)
    try:
        return register_error(client, path.name, "/" + path.name)
    finally:
        path.unlink()


@pytest.fixture()
def region():
    memory = shared_memory.SharedMemory(create=True, size=ROWS * WIDE * 4)
    yield memory
    memory.close()
    memory.unlink()


def test_truncating_an_object_under_requests_in_flight_fails_them_not_the_server(server_process, region):
    server = server_process()
    client = triton.InferenceServerClient(server.url)
    x = np.random.default_rng(0).random((ROWS, WIDE), dtype=np.float32)
    path = SHM_DIR / region.name
    answers: queue.Queue = queue.Queue()
    for round_ in range(5):
        os.truncate(path, x.nbytes)
        np.ndarray(x.shape, np.float32, region.buf)[:] = x
        client.register_system_shared_memory("victim", "/" + region.name, byte_size=x.nbytes)
        for _ in range(8):
            client.async_infer("wide", [wide_request("victim")], lambda result, error: answers.put(error))
        os.truncate(path, 0)  # the client pulls the object from under the requests
        errors = [answers.get(timeout=30) for _ in range(8)]
        assert server.alive(), (
            f"round {round_}: the server died ({server.proc.returncode})\n{server.log_text()[-2000:]}"
        )
        for error in errors:
            assert error is None or (error.status() == "StatusCode.INVALID_ARGUMENT" and "shrank" in error.message()), (
                error
            )
        client.unregister_system_shared_memory("victim")
    tensor = triton.InferInput("x", [2, WIDE], "FP32")
    tensor.set_data_from_numpy(x[:2])
    np.testing.assert_array_equal(client.infer("wide", [tensor]).as_numpy("y"), 2 * x[:2])


def test_symbolic_links_are_not_followed(server_process, tmp_path):
    server = server_process()
    client = triton.InferenceServerClient(server.url)
    target = tmp_path / "precious.txt"
    target.write_bytes(b"do not overwrite me" * 100)
    error = register_object_error(client, lambda path: path.symlink_to(target))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "symbolic link" in error.message()
    assert target.read_bytes() == b"do not overwrite me" * 100


def test_only_regular_files_of_the_servers_user_are_accepted(server_process):
    server = server_process()
    client = triton.InferenceServerClient(server.url)
    error = register_object_error(client, os.mkfifo)
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "not a regular file" in error.message()
    if os.geteuid() != 0:
        pytest.skip("giving an object to another user needs root")

    def owned_by_nobody(path: Path) -> None:
        path.write_bytes(bytes(64))
        os.chown(path, 65534, 65534)

    error = register_object_error(client, owned_by_nobody)
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "belongs to another user (uid 65534)" in error.message()


@pytest.mark.parametrize(
    "name, key, expected",
    [
        ("r", "/deepr\x00nul", "not a POSIX shared memory name"),
        ("r", "/" + "k" * 256, "not a POSIX shared memory name"),
        ("r", "//etc", "not a POSIX shared memory name"),
        ("x" * 5000, "/deepr-any", "expected 1 to 128 printable characters"),
        ("bad\nname", "/deepr-any", "expected 1 to 128 printable characters"),
    ],
)
def test_odd_keys_and_names_are_invalid_arguments(server_process, name, key, expected):
    server = server_process()
    error = register_error(triton.InferenceServerClient(server.url), name, key)
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and expected in error.message(), error
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize(
    "peer, local",
    [
        ("ipv4:127.0.0.1:50000", True),
        ("ipv4:127.8.9.10:1", True),
        ("ipv6:[::1]:50000", True),
        ("ipv6:%5B::1%5D:50000", True),
        ("ipv6:[::ffff:127.0.0.1]:5", True),
        ("unix:/tmp/deepr.sock", True),
        ("ipv4:10.1.2.3:50000", False),
        ("ipv6:[2001:db8::1]:443", False),
        ("ipv4:192.168.0.7:9", False),
        ("", False),
    ],
)
def test_registration_is_for_peers_on_this_host(peer, local):
    assert is_local_peer(peer) is local
