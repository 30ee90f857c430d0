"""InferenceClient: a small synchronous KServe V2 gRPC client returning numpy arrays.

with InferenceClient("localhost:8001") as client:
    probs = client.infer("mnist_convnet", {"images": batch})["probabilities"]
"""

from __future__ import annotations

import contextlib
import os
import queue
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import grpc
import numpy as np
from google.protobuf.message import Message

from serving.client.shared_memory import RegionPool, input_bytes, output_bytes, place_request, read_outputs
from serving.protocol.codecs import TensorSpec, decode_outputs, to_raw
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.protocol.generated import model_config_pb2 as mc

__all__ = ["InferenceClient", "InferenceServerError", "InferenceStream", "build_request", "client_for", "DEFAULT_URL"]

DEFAULT_URL = "localhost:8001"


class InferenceServerError(Exception):
    """The server answered with an error status (or could not be reached)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.name}: {message}")


class InferenceClient:
    """Args:
    url: host:port of the server.
    token: bearer token for servers started with one (default: $DEEPR_TOKEN).
    tls_ca: CA certificate file to verify a TLS server with (default: $DEEPR_TLS_CA);
        without it the connection is plain.
    tls_cert, tls_key: this client's certificate and key, for servers that require them.
    shared_memory: pass tensors through POSIX shared memory regions this client owns
        instead of the messages (the server must run on this host). Outputs whose size
        the model's metadata fixes are written there too; the rest come in the message.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = 256 * 1024 * 1024,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        shared_memory: bool = False,
    ) -> None:
        self.url = url
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        token = token if token is not None else os.environ.get("DEEPR_TOKEN")
        tls_ca = tls_ca if tls_ca is not None else os.environ.get("DEEPR_TLS_CA")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        if tls_ca:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            self._channel = grpc.secure_channel(url, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(url, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._regions = RegionPool(self._register_region, self._unregister_region) if shared_memory else None
        self._layouts: dict[tuple[str, str], tuple[list[TensorSpec], bool]] = {}

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._regions is not None:
            self._regions.close()
        self._channel.close()

    def _call(self, method: str, request: Message) -> Any:
        # The generated stubs are untyped: each method's response type is its RPC's.
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
                details = f"no deepr server reachable at {self.url} ({details}); start one with `deepr serve`"
            raise InferenceServerError(code, details or "") from None

    def is_server_live(self) -> bool:
        return self._call("ServerLive", pb.ServerLiveRequest()).live

    def is_server_ready(self) -> bool:
        return self._call("ServerReady", pb.ServerReadyRequest()).ready

    def is_model_ready(self, model: str, version: str = "") -> bool:
        return self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._call("ServerMetadata", pb.ServerMetadataRequest())

    def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        return self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))

    def model_config(self, model: str, version: str = "") -> mc.ModelConfig:
        return self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version)).config

    def repository_index(self) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Every model in the server's repository: name, version, state (READY, UNAVAILABLE...)
        and the reason it is not ready."""
        return list(self._call("RepositoryIndex", pb.RepositoryIndexRequest()).models)

    def load_model(self, model: str) -> None:
        """Load or reload `model` from the server's repository (a new export, a new version)."""
        self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model))

    def unload_model(self, model: str) -> None:
        """Stop serving `model`; requests already accepted are answered."""
        self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model))

    def stream(self) -> "InferenceStream":
        """A ModelStreamInfer stream: requests go out one by one on one HTTP/2 stream."""
        return InferenceStream(self)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        class_count: Mapping[str, int] | None = None,
        version: str = "",
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run `model` on `inputs`; returns the requested outputs (default: all).

        `class_count` maps an output name to K to receive its top K classes as
        "score:index:label" bytes (see serving.protocol.classification.parse_class_string).
        """
        if self._regions is not None:
            return self._infer_in_shared_memory(self._regions, model, inputs, outputs, class_count, version, request_id)
        request = build_request(
            model, inputs, outputs=outputs, class_count=class_count, version=version, request_id=request_id
        )
        return _decoded(self._call("ModelInfer", request), self.url)

    def _infer_in_shared_memory(
        self,
        regions: RegionPool,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        class_count: Mapping[str, int] | None,
        version: str,
        request_id: str,
    ) -> dict[str, np.ndarray]:
        specs, batched = self._layout(model, version)
        first = next(iter(inputs.values()), None)
        rows = np.shape(first)[0] if batched and first is not None and np.ndim(first) else None
        wanted = _wanted_outputs(outputs, class_count) or [s.name for s in specs]
        sizes = {s.name: output_bytes(s, rows) for s in specs}
        shared = [(n, size) for n in wanted if (size := sizes.get(n)) and n not in (class_count or {})]
        in_message = [n for n in wanted if n not in dict(shared)]
        with regions.lease(input_bytes(inputs) + sum(size for _, size in shared)) as region:
            request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
            placed = place_request(request, region, inputs, shared)
            _add_outputs(request, in_message, class_count)
            try:
                response = self._call("ModelInfer", request)
            except InferenceServerError:
                self._layouts.pop((model, version), None)  # the model may have been reloaded with other outputs
                raise
            arrays = {**_decoded(response, self.url), **read_outputs(response, region, placed)}
        return {t.name: arrays[t.name] for t in response.outputs}

    def _layout(self, model: str, version: str) -> tuple[list[TensorSpec], bool]:
        """The model's outputs and whether it is batched, asked once per model."""
        if (model, version) not in self._layouts:
            meta = self.model_metadata(model, version)
            specs = [TensorSpec(o.name, o.datatype, tuple(o.shape)) for o in meta.outputs]
            self._layouts[model, version] = specs, self.model_config(model, version).max_batch_size > 0
        return self._layouts[model, version]

    def _register_region(self, name: str, key: str, byte_size: int) -> None:
        try:
            self._call(
                "SystemSharedMemoryRegister",
                pb.SystemSharedMemoryRegisterRequest(name=name, key=key, byte_size=byte_size),
            )
        except InferenceServerError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InferenceServerError(
                    exc.code, f"{exc.message} (shared_memory=True needs the server on this host)"
                ) from None
            raise

    def _unregister_region(self, name: str) -> None:
        self._call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name))


def _decoded(response: pb.ModelInferResponse, url: str) -> dict[str, np.ndarray]:
    """The response's arrays. A response that breaks the protocol is the server's fault, so
    it raises InferenceServerError like any server failure, not the caller's ValueError."""
    try:
        return decode_outputs(response)
    except (ValueError, IndexError) as exc:
        raise InferenceServerError(grpc.StatusCode.INTERNAL, f"{url} sent a malformed response: {exc}") from None


def _wanted_outputs(outputs: Sequence[str] | None, class_count: Mapping[str, int] | None) -> list[str]:
    """Outputs to ask for by name: `outputs`, then class-count outputs not among them; empty: all."""
    return list(outputs or []) + [n for n in (class_count or {}) if n not in (outputs or [])]


def _add_outputs(request: pb.ModelInferRequest, names: Sequence[str], class_count: Mapping[str, int] | None) -> None:
    for name in names:
        out = request.outputs.add(name=name)
        if class_count and name in class_count:
            out.parameters["classification"].int64_param = class_count[name]


def build_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    class_count: Mapping[str, int] | None = None,
    version: str = "",
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw contents for `inputs`."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype, raw = to_raw(array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(raw)
    _add_outputs(request, _wanted_outputs(outputs, class_count), class_count)
    return request


@contextlib.contextmanager
def client_for(url: str, client: InferenceClient | None = None) -> Iterator[InferenceClient]:
    """`client` as it is, or a new one for `url` that is closed afterwards."""
    if client is not None:
        yield client
        return
    with InferenceClient(url) as own:
        yield own


class InferenceStream:
    """Requests and responses on one ModelStreamInfer call, in order; for callers that need
    each answer before the next question (sampling one character at a time)."""

    def __init__(self, client: InferenceClient) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._responses = client._stub.ModelStreamInfer(iter(self._requests.get, None), metadata=client._metadata)
        self.url = client.url

    def __enter__(self) -> "InferenceStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._requests.put(None)  # ends the request iterator, so the server ends the call
        self._responses.cancel()

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], **options: object) -> dict[str, np.ndarray]:
        self._requests.put(build_request(model, inputs, **options))  # type: ignore[arg-type]
        try:
            response = next(self._responses)
        except grpc.RpcError as exc:
            raise InferenceServerError(exc.code(), exc.details() or "") from None
        if response.error_message:
            code_name, _, message = response.error_message.partition(": ")
            code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN)
            raise InferenceServerError(code, message if code is not grpc.StatusCode.UNKNOWN else response.error_message)
        return _decoded(response.infer_response, self.url)
