"""ServerSettings: every server knob, from CLI flags or DEEPR_* environment variables."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.protocol.preprocessing import MAX_PICTURE_PIXELS

if TYPE_CHECKING:
    from serving.server.autocomplete import CompletionPolicy
    from serving.server.model import RuntimeOptions

__all__ = ["ServerSettings", "ENV_PREFIX", "default_repository", "default_runs"]

ENV_PREFIX = "DEEPR_"
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002


def default_runs() -> Path:
    """Where the default build keeps its training runs (weights, curves, metrics):
    `<default repository>.runs`."""
    repository = default_repository()
    return repository.with_name(repository.name + ".runs")


def default_repository() -> Path:
    """$DEEPR_HOME/repository, DEEPR_HOME defaulting to ~/.cache/deepr."""
    return Path(os.environ.get("DEEPR_HOME", Path.home() / ".cache" / "deepr")) / "repository"


@dataclass
class ServerSettings:
    repository: Path = field(default_factory=default_repository)
    """Model repository directory (Triton layout). Env: DEEPR_REPOSITORY."""
    host: str = "0.0.0.0"
    """Address the gRPC server binds. Env: DEEPR_HOST."""
    port: int = 8001
    """gRPC port (Triton's default); 0 picks a free one. Env: DEEPR_PORT."""
    http_port: int = DEFAULT_HTTP_PORT
    """V2 HTTP/REST port, with the zoo page at /; -1 turns HTTP off, 0 picks a free port.
    With `port` 0 the default becomes 0 too. Env: DEEPR_HTTP_PORT."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Prometheus metrics port (Triton's default); -1 turns metrics off, 0 picks a free
    port. With `port` 0 (several servers side by side) the default becomes 0 too. Env: DEEPR_METRICS_PORT."""
    event_loop: str = "auto"
    """asyncio event loop: auto (uvloop when installed, else asyncio's), uvloop or asyncio.
    uvloop served about 20% more requests per second in deepr bench. Env: DEEPR_EVENT_LOOP."""
    device: str = "auto"
    """onnxruntime device: auto (CUDA when usable), cuda or cpu. Env: DEEPR_DEVICE."""
    infer_threads: int = 4
    """Threads running onnxruntime sessions concurrently. Env: DEEPR_INFER_THREADS."""
    decode_threads: int = 0
    """Threads decoding the picture files of models that take encoded pictures, beside the
    event loop; 0: one per core. Env: DEEPR_DECODE_THREADS."""
    max_picture_pixels: int = MAX_PICTURE_PIXELS
    """Largest picture (width x height, read from its header before decoding) an encoded-
    picture model takes; larger ones are refused as decompression bombs. Env:
    DEEPR_MAX_PICTURE_PIXELS."""
    intra_op_threads: int = 0
    """onnxruntime intra-op threads per session; 0 lets onnxruntime choose. Env: DEEPR_INTRA_OP_THREADS."""
    tf32: bool = False
    """Allow TF32 on CUDA (faster convolutions and matmuls, ~1e-3 relative precision). Env: DEEPR_TF32."""
    ort_spinning: bool = False
    """Idle onnxruntime threads spin-wait for the next run (off: they yield the cores to
    the server's request handling, which serves more requests on few cores). Env: DEEPR_ORT_SPINNING."""
    max_message_bytes: int = 256 * 1024 * 1024
    """Largest gRPC message received or sent. Env: DEEPR_MAX_MESSAGE_BYTES."""
    grace_seconds: float = 10.0
    """On SIGTERM/SIGINT, time given to in-flight requests before exit. Env: DEEPR_GRACE_SECONDS."""
    server_id: str = "deepr"
    """The name ServerMetadata answers (Triton's --id; Triton's clients that check it expect
    "triton"). Env: DEEPR_SERVER_ID."""
    model_control: bool = True
    """Accept RepositoryModelLoad / RepositoryModelUnload requests. Env: DEEPR_MODEL_CONTROL."""
    startup_models: str = "*"
    """The models loaded when the server starts, comma-separated; "*": every model in the
    repository, "": none (Triton's explicit mode without --load-model). The others are listed
    in the index as not loaded, and load on request. Env: DEEPR_STARTUP_MODELS."""
    poll_seconds: float = 0.0
    """Poll mode: look at the repository this often and load new or changed models (once
    their files stop changing), unload removed ones; 0 does not poll. Env: DEEPR_POLL_SECONDS."""
    max_connections: int = 1024
    """Open client connections at most, on each of the gRPC and HTTP ports; further ones are
    refused until some close (each costs memory before any call is made, and before a
    token is checked). 0: no limit. Env: DEEPR_MAX_CONNECTIONS."""
    connection_idle_seconds: float = 300.0
    """A connection with no call in flight for this long is closed (gRPC: GOAWAY; clients
    reconnect on their next call), on both ports. 0 keeps idle connections.
    Env: DEEPR_CONNECTION_IDLE_SECONDS."""
    header_seconds: float = 10.0
    """An HTTP request line and headers must arrive whole within this long of their first
    byte, or the connection is closed (slow senders cannot hold connections); a connection's
    handshake (TLS on every port, HTTP/2's on gRPC) and each read on the metrics port get as
    long. 0: no limit. Env: DEEPR_HEADER_SECONDS."""
    max_inflight: int = 4096
    """Inference requests handled at once (unary calls and stream messages, queued or
    running); beyond it a request is answered RESOURCE_EXHAUSTED at once, logged (once per
    interval) and counted as a failure. Env: DEEPR_MAX_INFLIGHT."""
    trim_idle_seconds: float = 2.0
    """After a burst, once no request has been in flight for this long, the allocator's
    free memory goes back to the system (glibc malloc_trim); 0 keeps it. Env:
    DEEPR_TRIM_IDLE_SECONDS."""
    grpc_options: str = ""
    """Extra gRPC core channel arguments, `KEY=VALUE` separated by commas (integers where
    they parse), applied last. Env: DEEPR_GRPC_OPTIONS."""
    shared_memory: bool = True
    """Accept tensors in system shared memory regions that clients on this host register
    (read and written with positioned file I/O, never mapped; turn it off where clients
    on the host are not trusted). Env: DEEPR_SHARED_MEMORY."""
    shared_memory_remote: bool = False
    """Accept shared memory registrations from any peer, not only loopback and Unix sockets
    (for a client on this host that reaches the server through one of its other addresses).
    Env: DEEPR_SHARED_MEMORY_REMOTE."""
    shared_memory_group: str = ""
    """A group (name or id) whose shared memory objects are accepted besides those of the
    server's own user; objects of other users are refused. Env: DEEPR_SHARED_MEMORY_GROUP."""
    token: str = ""
    """When set, every inference-service RPC must carry `authorization: Bearer <token>`
    (the health service stays open for probes). Env: DEEPR_TOKEN."""
    tls_cert: str = ""
    """Server certificate chain (PEM); with tls_key, the server speaks TLS only. Env: DEEPR_TLS_CERT."""
    tls_key: str = ""
    """Server private key (PEM). Env: DEEPR_TLS_KEY."""
    tls_client_ca: str = ""
    """CA (PEM) that client certificates must be signed by: mutual TLS. Env: DEEPR_TLS_CLIENT_CA."""
    strict_model_config: bool = False
    """Serve complete configs only: a model folder without config.pbtxt, or with a config that
    gives no inputs or outputs, is UNAVAILABLE instead of completed from its graph.
    Env: DEEPR_STRICT_MODEL_CONFIG."""
    default_max_batch_size: int = 4
    """max_batch_size given, when completing a config, to a graph whose every input and output
    has a free first dimension (Triton's default, 4). Env: DEEPR_DEFAULT_MAX_BATCH_SIZE."""
    model_name: str = ""
    """The name a repository that is one model's own files (model.onnx at its top, KServe's
    layout) is served under; default: the folder's name. Env: DEEPR_MODEL_NAME."""
    workers: int = 1
    """Processes answering the same gRPC and HTTP ports (SO_REUSEPORT), under one supervising
    parent; to clients they are one server (serving/server/peers.py). Env: DEEPR_WORKERS."""
    worker_index: int = -1
    """Set by the parent for each of its workers: which one this process is (-1: a server of
    its own). Env: DEEPR_WORKER_INDEX."""
    worker_sockets: str = ""
    """Set by the parent: every worker's private Unix socket (unix:PATH), comma-separated, in
    worker order. Env: DEEPR_WORKER_SOCKETS."""
    worker_supervisor: str = ""
    """Set by the parent: its own private Unix socket (unix:PATH), where a worker sends the
    changes clients ask of the whole server and takes the server's state at start. Env:
    DEEPR_WORKER_SUPERVISOR."""
    worker_parent: int = 0
    """Set by the parent: its process id; a worker whose parent is gone drains and exits.
    Env: DEEPR_WORKER_PARENT."""
    worker_http_fd: int = -1
    """Set by the parent: the descriptor of the HTTP port's listening socket, which it bound
    once and every worker accepts on (-1: bind the HTTP port itself). Env: DEEPR_WORKER_HTTP_FD."""
    worker_timeout_seconds: float = 30.0
    """A worker that has answered its parent once and then not for this long is hung: it is
    killed and started again. 0: never. Env: DEEPR_WORKER_TIMEOUT_SECONDS."""
    strict_readiness: bool = True
    """Server readiness requires every model in the repository to be ready. Env: DEEPR_STRICT_READINESS."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A loop of the kind `event_loop` names."""
        if self.event_loop != "asyncio" and importlib.util.find_spec("uvloop") is not None:
            import uvloop

            return uvloop.new_event_loop()
        return asyncio.new_event_loop()

    def runtime(self) -> "RuntimeOptions":
        from serving.server.model import RuntimeOptions

        return RuntimeOptions(self.device, self.intra_op_threads, self.tf32, self.ort_spinning)

    def completion(self) -> "CompletionPolicy":
        from serving.server.autocomplete import CompletionPolicy

        return CompletionPolicy(self.strict_model_config, self.default_max_batch_size)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "ServerSettings":
        """Defaults, then DEEPR_* variables, then `overrides` that are not None."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
        if not -1 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port must be in -1..65535 (-1: off, 0: any free port), got {self.metrics_port}")
        if not -1 <= self.http_port < 65536:
            raise ValueError(f"http_port must be in -1..65535 (-1: off, 0: any free port), got {self.http_port}")
        if self.port == 0 and self.metrics_port == DEFAULT_METRICS_PORT:
            self.metrics_port = 0
        if self.port == 0 and self.http_port == DEFAULT_HTTP_PORT:
            self.http_port = 0
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ValueError(f"event_loop must be auto, uvloop or asyncio, got {self.event_loop!r}")
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("event_loop 'uvloop' was asked for, but uvloop is not installed (pip install uvloop)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key (PEM files)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (client certificates) needs TLS: give tls_cert and tls_key too")
        if self.infer_threads < 1:
            raise ValueError(f"infer_threads must be >= 1, got {self.infer_threads}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 (0: one per core), got {self.decode_threads}")
        if self.max_picture_pixels < 1:
            raise ValueError(f"max_picture_pixels must be >= 1, got {self.max_picture_pixels}")
        if self.max_connections < 0:
            raise ValueError(f"max_connections must be >= 0 (0: no limit), got {self.max_connections}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if self.poll_seconds < 0:
            raise ValueError(f"poll_seconds must be >= 0 (0: do not poll), got {self.poll_seconds}")
        if self.trim_idle_seconds < 0:
            raise ValueError(f"trim_idle_seconds must be >= 0 (0: never trim), got {self.trim_idle_seconds}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.worker_timeout_seconds < 0:
            raise ValueError(f"worker_timeout_seconds must be >= 0 (0: never), got {self.worker_timeout_seconds}")
        if self.default_max_batch_size < 1:
            raise ValueError(f"default_max_batch_size must be >= 1, got {self.default_max_batch_size}")
        if self.header_seconds < 0:
            raise ValueError(f"header_seconds must be >= 0 (0: no limit), got {self.header_seconds}")
        if self.connection_idle_seconds < 0:
            raise ValueError(
                f"connection_idle_seconds must be >= 0 (0: keep idle connections), got {self.connection_idle_seconds}"
            )
        self.extra_grpc_options()  # a malformed option is named now, not at bind time
        self.shared_memory_gid()  # an unknown group is named now, not at the first registration

    def extra_grpc_options(self) -> list[tuple[str, int | str]]:
        """`grpc_options` as channel arguments."""
        options: list[tuple[str, int | str]] = []
        for item in filter(None, (part.strip() for part in self.grpc_options.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.startswith("grpc."):
                raise ValueError(
                    f"grpc_options: expected KEY=VALUE with a key like grpc.max_concurrent_streams, got {item!r}"
                )
            options.append((key, int(value) if value.lstrip("-").isdigit() else value))
        return options

    def shared_memory_gid(self) -> int | None:
        """The group id `shared_memory_group` names, or None."""
        if not self.shared_memory_group:
            return None
        if self.shared_memory_group.isdigit():
            return int(self.shared_memory_group)
        import grp

        try:
            return grp.getgrnam(self.shared_memory_group).gr_gid
        except KeyError:
            raise ValueError(f"shared_memory_group {self.shared_memory_group!r} is not a group on this host") from None


def _parse(name: str, raw: str, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
