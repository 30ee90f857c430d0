"""Every REST route under generated bodies and headers: the server never fails (500), stays
alive, and its memory stays bounded. 503 is an answer here, not a failure: the fuzz unloads
models, which are then not ready. Bounded in examples, so it runs in CI in seconds."""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .probes import ServerProcess

MB = 1 << 20

MODELS = st.sampled_from(
    ["double", "strings", "strings_free", "pictures", "wide", "nope", "..", "a" * 300, "café"]
).map(quote)
ROUTES = st.one_of(
    st.tuples(st.just("GET"), st.sampled_from(["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats"])),
    st.tuples(
        st.just("GET"),
        st.builds(
            lambda m, tail: f"/v2/models/{m}{tail}", MODELS, st.sampled_from(["", "/ready", "/config", "/stats"])
        ),
    ),
    st.tuples(
        st.just("POST"),
        st.builds(
            lambda m, v: f"/v2/models/{m}" + (f"/versions/{v}" if v else "") + "/infer",
            MODELS,
            st.sampled_from(["", "1", "0", "-1", "99999999999999999999"]),
        ),
    ),
    st.tuples(st.just("POST"), st.sampled_from(["/v2/repository/index", "/v2/systemsharedmemory/unregister"])),
    st.tuples(
        st.just("POST"),
        st.builds(lambda m, a: f"/v2/repository/models/{m}/{a}", MODELS, st.sampled_from(["load", "unload"])),
    ),
    st.tuples(
        st.sampled_from(["GET", "POST"]),
        st.builds(
            lambda r, a: f"/v2/systemsharedmemory/region/{r}/{a}",
            st.sampled_from(["r", "x" * 200, "%00"]),
            st.sampled_from(["status", "register", "unregister"]),
        ),
    ),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "images", "y", ""]),
        "datatype": st.sampled_from(["FP32", "BYTES", "INT64", "UINT8", "FP16", "nope"]),
        "shape": st.lists(
            st.one_of(st.integers(-2, 300), st.sampled_from([2**31, 2**40, 2**63 - 1, 2**64])), max_size=4
        ),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(
                ["binary_data_size", "shared_memory_region", "shared_memory_byte_size", "classification", "z"]
            ),
            json_values,
            max_size=3,
        ),
    },
)
infer_documents = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3)},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["y", "mean", "z"])}, optional={"parameters": json_values}),
            max_size=2,
        ),
        "parameters": json_values,
        "id": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda doc, tail: json.dumps(doc).encode() + tail, infer_documents, st.binary(max_size=64)),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
)
headers = st.dictionaries(
    st.sampled_from(["Inference-Header-Content-Length", "Content-Type", "Authorization", "Content-Encoding", "X-Junk"]),
    st.one_of(
        st.integers(-5, 10**12).map(str),
        st.binary(max_size=24).map(lambda b: b.decode("latin-1").translate({13: None, 10: None, 0: None}).strip()),
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def fuzzed_server(chaos_repository):
    server = ServerProcess(chaos_repository)
    yield server
    server.stop()


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=ROUTES, body=bodies, extra=headers)
def test_no_route_fails_whatever_it_is_sent(fuzzed_server, route, body, extra):
    method, path = route
    host, port = fuzzed_server.http_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for key, value in extra.items():
            connection.putheader(key, value.encode("latin-1"))
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        text = answer.read()
    finally:
        connection.close()
    unloaded = answer.status == 503 and b"is not ready" in text
    assert answer.status < 500 or unloaded, (method, path, body[:200], extra, answer.status, text[:300])


def test_after_the_fuzz_the_server_is_alive_bounded_and_quiet(fuzzed_server):
    """Runs after the fuzz (same module, same server)."""
    assert fuzzed_server.alive()
    assert fuzzed_server.rss_bytes() < 600 * MB, f"RSS {fuzzed_server.rss_bytes() / MB:.0f} MB"
    log = fuzzed_server.log_text()
    assert "Traceback" not in log, log[-3000:]
