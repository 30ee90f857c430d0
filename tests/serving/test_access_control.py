"""Bearer tokens and TLS (server certificates, optional client certificates), tried with
tritonclient and deepr's own client."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.client import InferenceClient, InferenceServerError
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

TOKEN = "s3cret-token"


def settings(repository, **extra) -> ServerSettings:
    return ServerSettings(
        **{"repository": repository, "host": "127.0.0.1", "port": 0, "device": TEST_DEVICE, "metrics_port": -1, **extra}
    )


def digits(batch=2) -> np.ndarray:
    return np.zeros((batch, 1, 28, 28), np.float32)


def triton_infer(client, **kwargs):
    tensor = triton.InferInput("images", [2, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(digits())
    return client.infer("mnist_convnet", [tensor], **kwargs)


@pytest.fixture(scope="module")
def token_server(repository):
    with serve_in_thread(settings(repository, token=TOKEN)) as server:
        yield f"127.0.0.1:{server.port}"


def test_every_inference_rpc_but_health_needs_the_token(token_server):
    client = triton.InferenceServerClient(token_server)
    calls = {
        "ServerMetadata": lambda **h: client.get_server_metadata(**h),
        "ModelConfig": lambda **h: client.get_model_config("mnist_convnet", **h),
        "ModelInfer": lambda **h: triton_infer(client, **h),
        "ModelStatistics": lambda **h: client.get_inference_statistics(**h),
        "RepositoryIndex": lambda **h: client.get_model_repository_index(**h),
        "RepositoryModelUnload": lambda **h: client.unload_model("no_such_model", **h),
    }
    for name, call in calls.items():
        for headers, reason in (
            ({}, "missing bearer token"),
            ({"authorization": "Bearer wrong"}, "invalid bearer token"),
        ):
            with pytest.raises(InferenceServerException, match=reason) as err:
                call(headers=headers)
            assert err.value.status() == "StatusCode.UNAUTHENTICATED", name
    good = {"authorization": f"Bearer {TOKEN}"}
    assert client.get_server_metadata(headers=good).name == "deepr"
    assert triton_infer(client, headers=good).as_numpy("probabilities").shape == (2, 10)
    client.close()


def test_streams_need_the_token_and_deepr_client_sends_it(token_server):
    with InferenceClient(token_server, token="wrong") as wrong, pytest.raises(InferenceServerError) as err:
        wrong.stream().infer("mnist_convnet", {"images": digits()})
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with InferenceClient(token_server, token=TOKEN) as client:
        assert client.infer("mnist_convnet", {"images": digits()})["probabilities"].shape == (2, 10)
        with client.stream() as stream:
            assert stream.infer("mnist_convnet", {"images": digits()})["probabilities"].shape == (2, 10)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_scheme_is_matched_without_regard_to_case(token_server, scheme):
    client = triton.InferenceServerClient(token_server)
    assert client.get_server_metadata(headers={"authorization": f"{scheme} {TOKEN}"}).name == "deepr"
    client.close()


def scrape(url: str, authorization: str | None = None, context=None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_need_the_token_when_the_server_has_one(repository):
    with serve_in_thread(settings(repository, token=TOKEN, metrics_port=0)) as server:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        for authorization in (None, "Bearer wrong", f"Basic {TOKEN}"):
            status, body = scrape(url, authorization)
            assert status == 401 and "bearer token" in body and "mnist_convnet" not in body, authorization
        status, body = scrape(url, f"bearer {TOKEN}")
        assert status == 200 and "nv_inference_request_success" in body


def test_health_stays_open_for_probes(token_server):
    with grpc.insecure_channel(token_server) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_one_token_rule_for_health_on_both_transports(repository):
    """Server liveness and readiness answer without the token over gRPC and HTTP alike;
    a model's readiness and metadata ask for it on both."""
    with serve_in_thread(settings(repository, token=TOKEN, http_port=0)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException, match="missing bearer token"):
            client.is_model_ready("mnist_convnet")
        client.close()
        base = f"http://127.0.0.1:{server.http_port}"
        assert scrape(f"{base}/v2/health/live")[0] == 200
        assert scrape(f"{base}/v2/health/ready")[0] == 200
        assert scrape(f"{base}/v2/models/mnist_convnet/ready")[0] == 401
        assert scrape(f"{base}/v2/models/mnist_convnet/ready", f"Bearer {TOKEN}")[0] == 200


def test_a_header_that_is_not_utf8_is_an_invalid_token_not_a_failure(repository):
    with serve_in_thread(settings(repository, token=TOKEN, http_port=0)) as server:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as connection:
            connection.sendall(
                b"GET /v2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer caf\xc3\xa9\xff\xfe\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"invalid bearer token" in answer


def test_tls_server(repository, pki):
    with serve_in_thread(
        settings(repository, tls_cert=str(pki["cert"]), tls_key=str(pki["key"]), metrics_port=0)
    ) as server:
        url = f"127.0.0.1:{server.port}"
        status, body = scrape(
            f"https://127.0.0.1:{server.metrics_port}/metrics", context=ssl.create_default_context(cafile=pki["ca"])
        )
        assert status == 200 and "nv_inference_request_success" in body  # metrics speak TLS too
        status, _ = scrape(
            f"https://127.0.0.1:{server.http_port}/v2/health/ready",
            context=ssl.create_default_context(cafile=pki["ca"]),
        )
        assert status == 200  # and the REST endpoint
        client = triton.InferenceServerClient(url, ssl=True, root_certificates=str(pki["ca"]))
        assert triton_infer(client).as_numpy("probabilities").shape == (2, 10)
        client.close()
        with InferenceClient(url, tls_ca=pki["ca"]) as ours:
            assert ours.is_server_ready()
        with InferenceClient(url, timeout=3) as plaintext, pytest.raises(InferenceServerError) as err:
            plaintext.is_server_live()  # a plaintext client cannot talk to a TLS server
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_certificate(repository, pki):
    mtls = settings(repository, tls_cert=str(pki["cert"]), tls_key=str(pki["key"]), tls_client_ca=str(pki["ca"]))
    with serve_in_thread(mtls) as server:
        url = f"127.0.0.1:{server.port}"
        with InferenceClient(url, tls_ca=pki["ca"], tls_cert=pki["client_cert"], tls_key=pki["client_key"]) as client:
            assert client.infer("mnist_convnet", {"images": digits()})["probabilities"].shape == (2, 10)
        with InferenceClient(url, tls_ca=pki["ca"], timeout=3) as anonymous, pytest.raises(InferenceServerError) as err:
            anonymous.is_server_live()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        rest = f"https://127.0.0.1:{server.http_port}/v2/health/live"
        with_certificate = ssl.create_default_context(cafile=pki["ca"])
        with_certificate.load_cert_chain(pki["client_cert"], pki["client_key"])
        assert scrape(rest, context=with_certificate)[0] == 200
        with pytest.raises((ssl.SSLError, OSError)):  # urllib.error.URLError is an OSError
            scrape(rest, context=ssl.create_default_context(cafile=pki["ca"]))


def test_tls_settings_are_checked(repository, tmp_path):
    with pytest.raises(ValueError, match="needs both tls_cert and tls_key"):
        settings(repository, tls_cert="server.pem")
    with pytest.raises(ValueError, match="needs TLS"):
        settings(repository, tls_client_ca="ca.pem")
    from serving.server.grpc.auth import server_credentials

    with pytest.raises(ValueError, match="cannot read the TLS private key"):
        server_credentials(tmp_path / "missing.pem", tmp_path / "missing.key")
