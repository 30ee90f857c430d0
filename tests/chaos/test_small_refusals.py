"""What used to be a 500 or a traceback where a clear refusal belongs: each is now a 4xx with a
message, and nothing a client does puts a traceback in the log."""

from __future__ import annotations

import io
import json
import socket
import time

import pytest
from PIL import Image

from .test_hostile_requests import pictures_request, post

U64 = 2**64 - 1


def infer_body(**tensor) -> bytes:
    base = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    return json.dumps({"inputs": [{**base, **tensor}]}).encode()


@pytest.fixture(scope="module")
def server(chaos_repository):
    from .probes import ServerProcess

    process = ServerProcess(chaos_repository, "--max-picture-pixels", "1000000000")
    yield process
    process.stop()


@pytest.mark.parametrize(
    "path, body, expected",
    [
        ("/v2/models/double/infer", infer_body(shape=[U64, 4]), "past 2^63 - 1"),
        ("/v2/models/double/infer", infer_body(parameters={"p": U64}), "outside the 64-bit integers"),
        (
            "/v2/models/double/infer",
            json.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
                    "outputs": [{"name": "y", "parameters": {"classification": U64}}],
                }
            ).encode(),
            "outside the 64-bit integers",
        ),
        ("/v2/repository/models/double/load", b'{"parameters": 5}', "'parameters' must be an object"),
        ("/v2/repository/index", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        ("/v2/systemsharedmemory/region/r/register", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (
            "/v2/systemsharedmemory/region/r/register",
            b'{"key": "/k", "offset": -1, "byte_size": 16}',
            "integers >= 0",
        ),
        (
            "/v2/systemsharedmemory/region/r/register",
            b'{"key": "/k", "offset": true, "byte_size": 16}',
            "integers >= 0",
        ),
        ("/v2/systemsharedmemory/region/r/register", b'{"key": "/k", "byte_size": -5}', "integers >= 0"),
    ],
)
def test_each_is_a_client_error_with_a_message(server, path, body, expected):
    status, answer, _ = post(server.http_url, path, body)
    assert 400 <= status < 500, (status, answer)
    assert isinstance(answer, dict) and expected in answer["error"], answer
    assert server.alive()
    assert "Traceback" not in server.log_text()


def test_bytes_data_nested_1000_deep_is_read_without_recursion(server):
    """Row-major data may come nested to any depth orjson reads (1,024): flattened, not recursed."""
    body = b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 1], "data": ' + b"[" * 1000
    body += b'"deep"' + b"]" * 1000 + b"}]}"
    status, answer, _ = post(server.http_url, "/v2/models/strings/infer", body)
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == ["deep"]


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(server):
    port = int(server.http_url.rsplit(":", 1)[1])
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(
                b"POST /v2/models/double/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"{" * 1000
            )
            time.sleep(0.1)
    time.sleep(0.5)
    assert server.alive()
    log = server.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


def test_pillows_own_limit_is_reported_as_a_pixel_limit(server):
    """Past twice Pillow's MAX_IMAGE_PIXELS, Pillow refuses a picture before the server's own
    check (here set higher): the answer names the pixels, not a damaged file."""
    buffer = io.BytesIO()
    Image.new("L", (14000, 14000)).save(buffer, format="PNG")
    body, headers = pictures_request([buffer.getvalue()])
    status, answer, _ = post(server.http_url, "/v2/models/pictures/infer", body, headers)
    assert status == 400 and "Pillow's own pixel limit" in answer["error"] and "196000000" in answer["error"], answer
    assert "damaged" not in answer["error"]
