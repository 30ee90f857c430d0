"""A few hostile bytes must not cost the server gigabytes or seconds: requests that declare
huge shapes (A, B), and picture files whose count or size is only known once decoded (F)."""

from __future__ import annotations

import http.client
import io
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .probes import PICTURE_SIZE

MB = 1 << 20


def post(base: str, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 60):
    """(status, JSON answer or raw bytes, seconds) of one POST on a fresh connection."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    start = time.perf_counter()
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        answer = connection.getresponse()
        data = answer.read()
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    try:
        return answer.status, json.loads(data), seconds
    except ValueError:
        return answer.status, data, seconds


def declared_bytes_request(shape: list[int]) -> tuple[bytes, dict[str, str]]:
    """A REST request for a BYTES input declaring `shape`, carrying one 0-length element."""
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": 4}}]}
    ).encode()
    return header + struct.pack("<I", 0), {"Inference-Header-Content-Length": str(len(header))}


def good_request() -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()


def test_a_declared_shape_is_refused_before_anything_is_allocated(server_process):
    """A: a ~120-byte request declaring 10^8 BYTES elements (and 2^40) is refused at once,
    without the server's memory moving, while a good request is answered meanwhile."""
    server = server_process()
    base = server.http_url
    assert post(base, "/v2/models/double/infer", good_request())[0] == 200
    before = server.rss_bytes()
    for model, shape in [
        ("strings_free", [100_000_000]),
        ("strings_free", [2**40]),
        ("strings", [100_000_000, 1]),
        ("strings", [2**40, 1]),
    ]:
        body, headers = declared_bytes_request(shape)
        assert len(body) < 200
        status, answer, seconds = post(base, f"/v2/models/{model}/infer", body, headers)
        assert status == 400, answer
        assert "max_batch_size" in answer["error"] or "need at least" in answer["error"], answer
        assert seconds < 0.5, f"{shape}: refused after {seconds:.2f} s"
    status, _, seconds = post(base, "/v2/models/double/infer", good_request())
    assert status == 200 and seconds < 0.5
    grown = server.rss_bytes() - before
    assert grown < 30 * MB, f"RSS grew by {grown / MB:.0f} MB"
    assert "Traceback" not in server.log_text()


def grpc_bytes_request(model: str, shape: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(struct.pack("<I", 0))
    return request


def test_b_memory_stays_flat_over_grpc_after_refusals(server_process):
    """B: four 53-byte gRPC requests declaring 5 * 10^7 elements, 0.5 s apart: each refused,
    and the server's memory is where it started after each, not 400 MB higher per request."""
    server = server_process()
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10)
        before = server.rss_bytes()
        seen = []
        for model, shape in [("strings_free", [50_000_000])] * 2 + [("strings", [50_000_000, 1])] * 2:
            request = grpc_bytes_request(model, shape)
            assert request.ByteSize() < 80
            try:
                stub.ModelInfer(request, timeout=10)
                raise AssertionError("a request declaring 5 * 10^7 elements was answered")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            time.sleep(0.5)
            seen.append(server.rss_bytes() - before)
    assert max(seen) < 30 * MB, f"RSS after each refusal, above the start: {[round(s / MB) for s in seen]} MB"


def png(side: int, seed: int = 0) -> bytes:
    """A grey PNG of noise (noise: so it does not compress to nothing and decodes at full cost)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def pictures_request(files: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(files), 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def test_f_a_batch_too_large_is_refused_before_any_picture_is_decoded(server_process):
    server = server_process()
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000), 128).save(buffer, format="PNG")  # 4 KB of file, 4 MB of pixels
    body, headers = pictures_request([buffer.getvalue()] * 300)
    status, answer, seconds = post(server.http_url, "/v2/models/pictures/infer", body, headers)
    assert status == 400 and "batch of 300 exceeds" in answer["error"], answer
    assert seconds < 1.0, f"refused after {seconds:.2f} s"


def ico_around(inner_png: bytes, stated: int = 0) -> bytes:
    """An ICO file whose directory states `stated` x `stated` (0 means 256) around a PNG."""
    directory = struct.pack("<BBBBHHII", stated, stated, 0, 0, 1, 32, len(inner_png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + directory + inner_png


def test_f_a_picture_is_judged_by_its_header_and_its_format_before_it_is_decoded(server_process):
    """An ICO directory saying 256x256 around a 13000x13000 PNG is refused by its format; the
    PNG itself by its header; Pillow's own bomb guard answers with the server's message."""
    server = server_process("--max-picture-pixels", "40000000")
    huge = Image.new("L", (13000, 13000))
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    inner = buffer.getvalue()
    before = server.rss_bytes()
    for files, expected in [
        ([ico_around(inner)], "not a picture in a format the server takes"),
        ([inner], "169,000,000 pixels, over the limit of 40,000,000"),
    ]:
        body, headers = pictures_request(files)
        status, answer, seconds = post(server.http_url, "/v2/models/pictures/infer", body, headers)
        assert status == 400 and expected in answer["error"], answer
        assert seconds < 1.0
    grown = server.rss_bytes() - before
    assert grown < 60 * MB, f"RSS grew by {grown / MB:.0f} MB"  # the request's own 0.2 MB body aside
    body, headers = pictures_request([png(PICTURE_SIZE)])
    assert post(server.http_url, "/v2/models/pictures/infer", body, headers)[0] == 200


def test_f_small_pictures_are_not_stalled_by_requests_of_large_ones(server_process):
    """Four clients keep sending requests of 16 large pictures each; a request of one small
    picture waits for the pictures being decoded when it arrives, not for their queue."""
    server = server_process("--decode-threads", "2")
    base = server.http_url
    large_body, large_headers = pictures_request([png(1400, seed) for seed in range(16)])
    small_body, small_headers = pictures_request([png(PICTURE_SIZE)])
    stop = threading.Event()
    large_seconds: list[float] = []

    def keep_sending() -> None:
        while not stop.is_set():
            status, answer, seconds = post(base, "/v2/models/pictures/infer", large_body, large_headers)
            assert status == 200, answer
            large_seconds.append(seconds)

    with ThreadPoolExecutor(4) as pool:
        senders = [pool.submit(keep_sending) for _ in range(4)]
        time.sleep(2)
        small = []
        for _ in range(12):
            status, _, seconds = post(base, "/v2/models/pictures/infer", small_body, small_headers)
            assert status == 200
            small.append(seconds)
            time.sleep(0.1)
        stop.set()
        for sender in senders:
            sender.result()
    one_large = float(np.median(large_seconds))
    print(
        f"small-picture latency under load: median {np.median(small):.3f} s, max {max(small):.3f} s; "
        f"a large request takes {one_large:.2f} s"
    )
    assert np.median(small) < one_large / 4, (small, one_large)
