"""System shared memory: tensors registered by tritonclient travel outside the message."""

from __future__ import annotations

import os
import warnings
from multiprocessing import shared_memory
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from exporters.repository import add_to_repository, serving_config
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings


@pytest.fixture()
def region() -> Iterator[shared_memory.SharedMemory]:
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)
    yield shm
    shm.close()
    shm.unlink()


@pytest.fixture()
def client(server_url) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server_url)
    yield client
    client.unregister_system_shared_memory()  # every region, so tests do not see each other's
    client.close()


def key(shm: shared_memory.SharedMemory) -> str:
    return "/" + shm.name  # Python's SharedMemory names omit the POSIX leading slash


def put(shm: shared_memory.SharedMemory, array: np.ndarray, offset: int = 0) -> int:
    raw = np.ascontiguousarray(array).tobytes()
    shm.buf[offset : offset + len(raw)] = raw
    return len(raw)


def digits(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


def expected(repository: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(repository / "mnist_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def mnist_io(client) -> tuple[str, str]:
    meta = client.get_model_metadata("mnist_convnet")
    return meta.inputs[0].name, meta.outputs[0].name


def test_input_and_output_in_shared_memory(client, region, repository):
    x = digits(32)
    name_in, name_out = mnist_io(client)
    size_in = put(region, x, offset=4096)
    client.register_system_shared_memory("images", key(region), byte_size=region.size)

    tensor = triton.InferInput(name_in, list(x.shape), "FP32")
    tensor.set_shared_memory("images", size_in, offset=4096)
    output = triton.InferRequestedOutput(name_out)
    out_offset = 4096 + size_in
    output.set_shared_memory("images", 32 * 10 * 4, offset=out_offset)
    result = client.infer("mnist_convnet", [tensor], outputs=[output])

    meta = result.get_output(name_out)
    assert list(meta.shape) == [32, 10] and meta.datatype == "FP32"
    assert meta.parameters["shared_memory_byte_size"].int64_param == 32 * 10 * 4
    assert result.get_response().raw_output_contents == [b""]  # nothing crossed the socket
    got = np.ndarray((32, 10), np.float32, buffer=region.buf, offset=out_offset).copy()
    np.testing.assert_allclose(got, expected(repository, x), atol=1e-6)
    assert np.array_equal(np.ndarray(x.shape, np.float32, buffer=region.buf, offset=4096), x)  # input left as it was


def test_shared_memory_input_with_output_in_the_message(client, region, repository):
    x = digits(5)
    name_in, name_out = mnist_io(client)
    client.register_system_shared_memory("in", key(region), byte_size=put(region, x))
    tensor = triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory("in", x.nbytes)
    result = client.infer("mnist_convnet", [tensor], outputs=[triton.InferRequestedOutput(name_out)])
    np.testing.assert_allclose(result.as_numpy(name_out), expected(repository, x), atol=1e-6)


def test_region_at_an_offset_of_the_object(client, region, repository):
    # The region starts 8192 bytes into the object; tensor offsets count from the region's start.
    x = digits(3)
    name_in, name_out = mnist_io(client)
    put(region, x, offset=8192 + 100)
    client.register_system_shared_memory("late", key(region), byte_size=region.size - 8192, offset=8192)
    tensor = triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory("late", x.nbytes, offset=100)
    result = client.infer("mnist_convnet", [tensor], outputs=[triton.InferRequestedOutput(name_out)])
    np.testing.assert_allclose(result.as_numpy(name_out), expected(repository, x), atol=1e-6)


def test_status_register_unregister(client, region):
    client.register_system_shared_memory("a", key(region), byte_size=1000, offset=24)
    client.register_system_shared_memory("b", key(region), byte_size=region.size)
    status = client.get_system_shared_memory_status()
    assert {name: (r.key, r.offset, r.byte_size) for name, r in status.regions.items()} == {
        "a": (key(region), 24, 1000),
        "b": (key(region), 0, region.size),
    }
    assert list(client.get_system_shared_memory_status("a").regions) == ["a"]

    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("a", key(region), byte_size=8)
    assert exc.value.status() == "StatusCode.ALREADY_EXISTS"

    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("never-registered")  # not an error
    assert list(client.get_system_shared_memory_status().regions) == ["b"]
    with pytest.raises(InferenceServerException) as exc:
        client.get_system_shared_memory_status("a")
    assert exc.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(
    "bad_key, reason",
    [
        ("/deepr-no-such-object", "no shared memory object"),
        ("/../etc/passwd", "not a POSIX shared memory name"),
        ("etc", "not a POSIX shared memory name"),
        ("/", "not a POSIX shared memory name"),
    ],
)
def test_register_refuses_bad_keys(client, bad_key, reason):
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("r", bad_key, byte_size=16)
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and reason in exc.value.message()


def test_register_refuses_ranges_beyond_the_object(client, region):
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("r", key(region), byte_size=region.size, offset=1)
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "beyond the end" in exc.value.message()


def infer_error(client, inputs, outputs=None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mnist_convnet", inputs, outputs=outputs)
    return exc.value


def test_bad_tensor_slices_are_refused_and_the_server_goes_on(client, region, repository):
    x = digits(4)
    name_in, name_out = mnist_io(client)
    client.register_system_shared_memory("r", key(region), byte_size=put(region, x) + 16)

    def shm_input(region_name="r", byte_size=x.nbytes, offset=0):
        return triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory(region_name, byte_size, offset)

    cases = [
        (shm_input("unknown"), None, "'unknown' is not registered"),
        (shm_input(byte_size=x.nbytes - 4), None, f"needs {x.nbytes} bytes"),
        (shm_input(offset=32), None, "outside shared memory region 'r'"),
    ]
    small = triton.InferRequestedOutput(name_out)
    small.set_shared_memory("r", 4 * 10 * 4 - 1)
    cases.append((shm_input(), [small], "needs 160 bytes"))
    for inputs, outputs, reason in cases:
        error = infer_error(client, [inputs], outputs)
        assert error.status() == "StatusCode.INVALID_ARGUMENT" and reason in error.message(), error.message()

    result = client.infer("mnist_convnet", [shm_input()], outputs=[triton.InferRequestedOutput(name_out)])
    np.testing.assert_allclose(result.as_numpy(name_out), expected(repository, x), atol=1e-6)


def test_classification_cannot_go_to_shared_memory(client, region):
    x = digits(2)
    name_in, name_out = mnist_io(client)
    client.register_system_shared_memory("r", key(region), byte_size=region.size)
    tensor = triton.InferInput(name_in, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    output = triton.InferRequestedOutput(name_out, class_count=3)
    output._output.parameters["shared_memory_region"].string_param = "r"  # tritonclient refuses to send this
    output._output.parameters["shared_memory_byte_size"].int64_param = 1024
    error = infer_error(client, [tensor], [output])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "classification" in error.message()


def pair_model(path: Path) -> Path:
    """sum = a + b, two batched [3] float inputs: for requests mixing shared memory and raw contents."""
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in "ab")
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "pair", [a, b], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_inputs_mixing_shared_memory_and_raw_contents(tmp_path, region):
    repo = tmp_path / "repo"
    add_to_repository(repo, serving_config("pair", 8), pair_model(tmp_path / "pair.onnx"))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 10, np.float32)
    with serve_in_thread(ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        client.register_system_shared_memory("a", key(region), byte_size=put(region, a))
        # The first input is in shared memory, so the only raw_input_contents entry is b's.
        ta = triton.InferInput("a", [2, 3], "FP32").set_shared_memory("a", a.nbytes)
        tb = triton.InferInput("b", [2, 3], "FP32")
        tb.set_data_from_numpy(b)
        result = client.infer("pair", [ta, tb])
        np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
        client.close()


def test_servers_started_without_shared_memory_refuse_it(repository, region):
    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, shared_memory=False)
    with serve_in_thread(settings) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert "system_shared_memory" not in client.get_server_metadata().extensions
        with pytest.raises(InferenceServerException) as exc:
            client.register_system_shared_memory("r", key(region), byte_size=16)
        assert exc.value.status() == "StatusCode.FAILED_PRECONDITION" and "--no-shared-memory" in exc.value.message()
        name_in, _ = mnist_io(client)
        error = infer_error(client, [triton.InferInput(name_in, [1, 1, 28, 28], "FP32").set_shared_memory("r", 3136)])
        assert error.status() == "StatusCode.FAILED_PRECONDITION"
        client.close()


def slice_parameters(region_name: str, byte_size: int, offset: int = 0) -> dict:
    from serving.protocol.generated import grpc_predict_v2_pb2 as pb

    return {
        "shared_memory_region": pb.InferParameter(string_param=region_name),
        "shared_memory_byte_size": pb.InferParameter(int64_param=byte_size),
        "shared_memory_offset": pb.InferParameter(int64_param=offset),
    }


def test_a_slice_outlives_unregister_and_reads_a_copy(region):
    from serving.protocol.codecs import TensorSpec
    from serving.server.shared_memory import SharedMemoryRegions

    regions = SharedMemoryRegions()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    regions.register("r", key(region), 0, put(region, x))
    where = regions.tensor_slice(slice_parameters("r", x.nbytes), "input 'x'")
    regions.unregister()  # a request holding the slice still reads the object it named
    array = where.read(TensorSpec("x", "FP32", (-1, 4)), (3, 4))
    assert regions.status() == []
    put(region, x + 1)  # the client reuses its region: what the server read is its own copy
    np.testing.assert_array_equal(array, x)


def test_bytes_tensors_round_trip(region):
    from serving.protocol.codecs import TensorSpec
    from serving.server.shared_memory import SharedMemoryRegions

    regions = SharedMemoryRegions()
    regions.register("r", key(region), 0, 256)
    words = np.array([b"cat", b"", b"dog \xff"], dtype=np.object_)
    written = regions.tensor_slice(slice_parameters("r", 200, 8), "output 'w'").write(words)
    assert written == 3 * 4 + 3 + 0 + 5
    back = regions.tensor_slice(slice_parameters("r", written, 8), "input 'w'").read(
        TensorSpec("w", "BYTES", (-1,)), (3,)
    )
    assert back.tolist() == words.tolist()


def test_deepr_client_in_shared_memory(server_url, repository):
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import InferenceClient

    before = set(Path("/dev/shm").iterdir())
    with InferenceClient(server_url, shared_memory=True) as client:
        for rows in (3, 256):
            x = digits(rows)
            got = client.infer("mnist_convnet", {"images": x})
            assert list(got) == ["probabilities"]
            np.testing.assert_allclose(got["probabilities"], expected(repository, x), atol=1e-6)
        # Classification results are strings of unknown length: they come back in the message.
        top = client.infer("mnist_convnet", {"images": digits(2)}, class_count={"probabilities": 2})["probabilities"]
        assert top.shape == (2, 2) and top.dtype == object

        # Concurrent calls lease a region each, so no answer is overwritten by another.
        batches = [np.random.default_rng(seed).random((1 + seed, 1, 28, 28), dtype=np.float32) for seed in range(12)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda b: client.infer("mnist_convnet", {"images": b})["probabilities"], batches))
        for batch, answer in zip(batches, answers):
            np.testing.assert_allclose(answer, expected(repository, batch), atol=1e-6)
        with triton.InferenceServerClient(server_url) as other:
            registered = list(other.get_system_shared_memory_status().regions)
        assert registered and all(name.startswith("deepr-client-") for name in registered)
    with triton.InferenceServerClient(server_url) as other:
        assert not other.get_system_shared_memory_status().regions  # close() unregistered them
    assert set(Path("/dev/shm").iterdir()) <= before  # and freed the memory


def test_region_pool_grows_and_frees():
    from serving.client.shared_memory import RegionPool

    registered: dict[str, tuple[str, int]] = {}
    pool = RegionPool(lambda name, key, size: registered.__setitem__(name, (key, size)), registered.pop)
    with pool.lease(10) as small:
        assert small.memory.size == 1 << 20 and registered[small.name] == ("/" + small.memory.name, 1 << 20)
        with pool.lease(10) as second:  # in use: a second region, not the same one
            assert second.name != small.name
    with pool.lease(3 * (1 << 20) + 1) as big:  # too big for either: one is replaced by a 4 MiB region
        assert big.memory.size == 4 << 20
    assert sorted(size for _, size in registered.values()) == [1 << 20, 4 << 20]
    pool.close()
    assert registered == {}


def test_an_object_shrunk_after_registering_is_refused_not_a_crash(client, region, repository):
    x = digits(4)
    name_in, name_out = mnist_io(client)
    client.register_system_shared_memory("r", key(region), byte_size=put(region, x))
    os.truncate(Path("/dev/shm") / region.name, 1024)  # the client shrinks its object behind the server's back
    tensor = triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory("r", x.nbytes)
    error = infer_error(client, [tensor])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "shrank to 1024 bytes" in error.message()
    os.truncate(Path("/dev/shm") / region.name, 1 << 20)
    put(region, x)
    result = client.infer("mnist_convnet", [tensor], outputs=[triton.InferRequestedOutput(name_out)])  # alive and well
    np.testing.assert_allclose(result.as_numpy(name_out), expected(repository, x), atol=1e-6)


def test_tritonclients_own_shared_memory_helpers(client, repository):
    # The helpers Triton users already have (tritonclient.utils.shared_memory: shm_open via
    # its libcshm, keys with the leading slash), unchanged against deepr.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import tritonclient.utils.shared_memory as shm

    x = digits(6)
    name_in, name_out = mnist_io(client)
    key = f"/deepr-test-{os.getpid()}"
    handle = shm.create_shared_memory_region("triton-helpers", key, x.nbytes + 6 * 10 * 4)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("triton-helpers", key, x.nbytes + 6 * 10 * 4)
        tensor = triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory("triton-helpers", x.nbytes)
        output = triton.InferRequestedOutput(name_out)
        output.set_shared_memory("triton-helpers", 6 * 10 * 4, offset=x.nbytes)
        result = client.infer("mnist_convnet", [tensor], outputs=[output])
        meta = result.get_output(name_out)
        got = shm.get_contents_as_numpy(handle, np.float32, list(meta.shape), offset=x.nbytes)
        np.testing.assert_allclose(got, expected(repository, x), atol=1e-6)
    finally:
        shm.destroy_shared_memory_region(handle)


def test_registering_again_and_again_leaks_nothing(client, region, repository):
    # Each registration maps the object and holds a descriptor; unregistering must give both back.
    x = digits(2)
    name_in, name_out = mnist_io(client)
    put(region, x)

    def open_files_and_maps() -> tuple[int, int]:
        return len(os.listdir("/proc/self/fd")), Path("/proc/self/maps").read_text().count("\n")

    for _ in range(3):  # let grpc's and numpy's own first-time allocations settle
        client.register_system_shared_memory("again", key(region), byte_size=x.nbytes)
        client.infer(
            "mnist_convnet", [triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory("again", x.nbytes)]
        )
        client.unregister_system_shared_memory("again")
    before = open_files_and_maps()
    for _ in range(100):
        client.register_system_shared_memory("again", key(region), byte_size=x.nbytes)
        client.infer(
            "mnist_convnet", [triton.InferInput(name_in, list(x.shape), "FP32").set_shared_memory("again", x.nbytes)]
        )
        client.unregister_system_shared_memory("again")
    files, maps = open_files_and_maps()
    assert files <= before[0] + 2 and maps <= before[1] + 8, (before, (files, maps))


def test_shared_memory_over_http(region, repository):
    """The REST routes register a region and tensors name it, as over gRPC."""
    import tritonclient.http as triton_http

    from serving.server.grpc.server import serve_in_thread

    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE)
    with serve_in_thread(settings) as server:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        try:
            x = digits(4)
            size_in = put(region, x)
            client.register_system_shared_memory("batch", key(region), byte_size=region.size)
            assert client.get_system_shared_memory_status()[0]["name"] == "batch"
            tensor = triton_http.InferInput("images", list(x.shape), "FP32")
            tensor.set_shared_memory("batch", size_in)
            output = triton_http.InferRequestedOutput("probabilities")
            output.set_shared_memory("batch", 4 * 10 * 4, offset=size_in)
            result = client.infer("mnist_convnet", [tensor], outputs=[output])
            # as Triton answers it: no parameters object, which Triton's C++ client (perf_analyzer)
            # would read binary_data_size from
            assert result.get_output("probabilities") == {"name": "probabilities", "datatype": "FP32", "shape": [4, 10]}
            got = np.ndarray((4, 10), np.float32, buffer=region.buf, offset=size_in).copy()
            np.testing.assert_allclose(got, expected(repository, x), atol=1e-6)
            client.unregister_system_shared_memory("batch")
            assert client.get_system_shared_memory_status() == []
        finally:
            client.close()
            client.close = lambda: None  # its __del__ closes again, from whichever thread collects it


def test_cuda_shared_memory_is_answered_as_a_server_without_cuda_ipc(server_url, repository):
    """Triton's clients unregister CUDA regions before they start: that succeeds, the status
    lists none, and registering is refused naming why, on both transports."""
    import tritonclient.http as triton_http

    grpc_client = triton.InferenceServerClient(server_url)
    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE)
    with serve_in_thread(settings) as server:
        http_client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        try:
            for client, none, refused in (
                (grpc_client, {}, "StatusCode.FAILED_PRECONDITION"),
                (http_client, [], 400),
            ):
                client.unregister_cuda_shared_memory()
                client.unregister_cuda_shared_memory("gpu_region")
                status = client.get_cuda_shared_memory_status()
                assert (status if isinstance(status, list) else dict(status.regions)) == none
                with pytest.raises(InferenceServerException, match="Unable to find cuda shared memory region"):
                    client.get_cuda_shared_memory_status("gpu_region")
                with pytest.raises(InferenceServerException, match="does not open CUDA IPC handles") as err:
                    client.register_cuda_shared_memory("gpu_region", b"\0" * 64, 0, 1024)
                assert err.value.status() in (refused, str(refused))
        finally:
            http_client.close()
            http_client.close = lambda: None
            grpc_client.close()
