"""deepr serve"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from serving.server.settings import ENV_PREFIX, ServerSettings, default_repository

from .arguments import integer, number
from .errors import EXIT_USAGE, CLIError

logger = logging.getLogger("deepr.serve")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return None
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise CLIError(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not token:
        raise CLIError(f"--token-file {args.token_file} is empty", EXIT_USAGE)
    return token


_POLL_SECONDS = 5.0


def _worker_count(text: str) -> int | str:
    if text == "auto":
        return text
    return integer(1, 256)(text)


def _control_mode(args: argparse.Namespace) -> str | None:
    """--model-control, or Triton's --model-control-mode (not both)."""
    if args.model_control_mode is not None:
        if args.model_control is not None:
            raise CLIError("--model-control and --model-control-mode say the same thing: give one", EXIT_USAGE)
        return args.model_control_mode
    return args.model_control


def _startup_models(args: argparse.Namespace) -> str | None:
    """What loads at startup, with Triton's meaning of --load-model and --model-control-mode:
    in explicit mode only the models --load-model names ("*": all), none without it. deepr's own
    --model-control explicit (the default) loads every model, as before."""
    names = args.load_model or []
    if names and _control_mode(args) not in ("explicit", None):
        raise CLIError(
            f"--load-model needs explicit model control (got --model-control {_control_mode(args)})", EXIT_USAGE
        )
    if "*" in names:
        return "*"
    if names:
        return ",".join(dict.fromkeys(names))
    return "" if args.model_control_mode == "explicit" else None


def _poll_seconds(args: argparse.Namespace) -> float | None:
    if args.model_control != "poll" and args.model_control_mode != "poll":
        if args.poll_seconds is not None:
            raise CLIError("--poll-seconds needs --model-control poll", EXIT_USAGE)
        return None
    return args.poll_seconds or _POLL_SECONDS


def _building(names: list[str], threads: list[threading.Thread]) -> Callable[[Any], None]:
    """Once the server answers: train and export the default models `names` and their
    explaining graphs in a background thread (appended to `threads`), quickest first, loading
    each graph into the server as it is written. Each epoch is a log line, and the index shows
    the model LOADING at that epoch."""

    def start(server: Any) -> None:
        from exporters.defaults import build_default_models, default_graphs
        from serving.server.repository import LOADING, UNAVAILABLE

        loop = asyncio.get_running_loop()
        started = time.monotonic()
        repository = server.dataplane.repository
        graphs = [g for name in names for g in default_graphs(name) if not (server.settings.repository / g).is_dir()]

        def load(name: str) -> None:
            asyncio.run_coroutine_threadsafe(server.dataplane.load_model(name), loop).result()
            logger.info("%s is ready, %.0f s after the server started", name, time.monotonic() - started)

        def epoch_done(report: Any) -> None:
            logger.info("%s", report.line())
            waiting = [g for g in default_graphs(report.model) if g in graphs]
            repository.expect(
                waiting,
                LOADING,
                f"being trained by the server: epoch {report.epoch}/{report.epochs}, "
                f"about {report.seconds_left:.0f} s left",
            )

        def another_builds(pid: int) -> None:
            repository.expect(
                graphs,
                LOADING,
                f"being built by another process on this home (pid {pid}); served as each model is written",
            )

        def build() -> None:
            try:
                build_default_models(
                    server.settings.repository,
                    names,
                    progress=False,
                    on_built=load,
                    on_epoch=epoch_done,
                    on_wait=another_builds,
                )
            except Exception as exc:  # the server goes on serving what it has; the log says why the rest is missing
                logger.exception("building the default models failed")
                reason = f"building it failed ({type(exc).__name__}: {exc}); the server's log has the details"
                repository.expect(graphs, UNAVAILABLE, reason)

        queue = ", ".join(names)
        logger.info(
            "building the default models in %s while serving, quickest first: %s", server.settings.repository, queue
        )
        repository.expect(graphs, LOADING, f"being trained and exported by the server (queue: {queue})")
        # a daemon thread: stopping the server does not wait for a training run to finish
        thread = threading.Thread(target=build, name="deepr-build-defaults", daemon=True)
        threads.append(thread)
        thread.start()

    return start


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = ServerSettings.from_env(
            repository=args.repository,
            host=args.host,
            port=args.port,
            http_port=-1 if args.no_http else args.http_port,
            metrics_port=args.metrics_port,
            device=args.device,
            infer_threads=args.infer_threads,
            decode_threads=args.decode_threads,
            max_picture_pixels=args.max_picture_pixels,
            intra_op_threads=args.intra_op_threads,
            ort_spinning=args.ort_spinning,
            tf32=args.tf32,
            max_message_bytes=args.max_message_bytes,
            event_loop=args.event_loop,
            grace_seconds=args.grace_seconds,
            strict_readiness=args.strict_readiness,
            strict_model_config=args.strict_model_config,
            default_max_batch_size=args.default_max_batch_size,
            model_name=args.model_name,
            server_id=args.id,
            model_control=None if _control_mode(args) is None else _control_mode(args) != "none",
            startup_models=_startup_models(args),
            poll_seconds=_poll_seconds(args),
            max_connections=args.max_connections,
            connection_idle_seconds=args.connection_idle_seconds,
            header_seconds=args.header_seconds,
            max_inflight=args.max_inflight,
            trim_idle_seconds=args.trim_idle_seconds,
            grpc_options=",".join(args.grpc_option) if args.grpc_option else None,
            shared_memory=args.shared_memory,
            shared_memory_remote=args.shared_memory_remote,
            shared_memory_group=args.shared_memory_group,
            token=_token(args),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            workers=_workers(args),
            worker_timeout_seconds=args.worker_timeout,
        )
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    from serving.server.descriptors import fit_connection_caps, raise_open_files_limit

    settings = fit_connection_caps(settings, raise_open_files_limit())
    if settings.worker_index < 0:
        _check_before_anything(settings)
    if settings.worker_index >= 0:  # one of a parent's workers: its log lines say which
        from serving.server.worker_process import follow_parent

        _name_the_worker(settings.worker_index)
        follow_parent(settings.worker_parent)
        return _run_server(settings, [])
    to_build: list[str] = []
    if settings.repository == default_repository() or args.build_defaults:
        from exporters.defaults import missing_default_models

        to_build = missing_default_models(settings.repository)
        settings.repository.mkdir(parents=True, exist_ok=True)
    elif not settings.repository.exists():
        raise CLIError(
            f"model repository {settings.repository} does not exist; export models into it with "
            f"`deepr export MODEL --repository {settings.repository}`, or add --build-defaults",
            EXIT_USAGE,
        )

    if args.engine == "triton":
        return _run_on_triton(settings, to_build)
    if settings.workers > 1:
        return _run_workers(settings, to_build)
    return _run_server(settings, to_build)


def _check_before_anything(settings: ServerSettings) -> None:
    """The ports (taken, or named twice) and the TLS files, before any model or PyTorch is
    loaded: a mistake there is said in a moment."""
    from serving.server.ports import PortsInUse, check_ports
    from serving.server.tls import check_tls_files

    try:
        check_ports(settings)
        check_tls_files(settings)
        _check_startup_models(settings)
    except PortsInUse as exc:
        raise CLIError(str(exc), EXIT_USAGE if " are both " in str(exc) else 1) from None
    except ValueError as exc:  # unusable TLS files
        raise CLIError(str(exc), EXIT_USAGE) from None


def _check_startup_models(settings: ServerSettings) -> None:
    """Each --load-model name is a model folder of the repository (Triton refuses to start otherwise)."""
    if settings.startup_models in ("*", "") or not settings.repository.is_dir():
        return
    for name in settings.startup_models.split(","):
        if not (settings.repository / name).is_dir() or name.startswith("."):
            found = sorted(p.name for p in settings.repository.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise CLIError(f"--load-model {name!r}: no such model in {settings.repository}; it has {found}", EXIT_USAGE)


def _workers(args: argparse.Namespace) -> int | None:
    """--workers as a count: `auto` is decided here, and the choice logged."""
    if args.workers != "auto":
        return args.workers
    from serving.server.workers import auto_workers

    count, why = auto_workers(args.device or os.environ.get("DEEPR_DEVICE", "auto"))
    logger.info("--workers auto: %s", why)
    return count


def _name_the_worker(index: int) -> None:
    prefix = f"worker {index}: "

    def named(record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(prefix):
            record.msg = prefix + str(record.msg)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(named)


def _build_first(settings: ServerSettings, to_build: list[str], why: str) -> None:
    """Build the default models `to_build` before serving (a server that cannot load models
    as they are written)."""
    if not to_build:
        return
    from exporters.defaults import build_default_models

    logger.info("building the default models before %s starts: %s", why, ", ".join(to_build))
    build_default_models(settings.repository, to_build, progress=False, on_epoch=lambda r: logger.info("%s", r.line()))


def _run_on_triton(settings: ServerSettings, to_build: list[str]) -> int:
    """Triton's server on the repository, with deepr's runtime in its python backend."""
    from serving.triton_engine.distribution import TritonUnavailable
    from serving.triton_engine.launch import serve_on_triton

    _build_first(settings, to_build, "Triton")
    try:
        return serve_on_triton(settings)
    except TritonUnavailable as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # flags Triton does not take
        raise CLIError(str(exc), EXIT_USAGE) from None


def _run_workers(settings: ServerSettings, to_build: list[str]) -> int:
    """The parent of `settings.workers` servers: the default models are built first (each
    worker would train them again), then the workers start."""
    from serving.server.workers import serve_workers

    _build_first(settings, to_build, f"the {settings.workers} workers")
    return serve_workers(settings)


def _run_server(settings: ServerSettings, to_build: list[str]) -> int:
    from serving.server.grpc.server import InferenceServer

    builders: list[threading.Thread] = []
    try:
        with asyncio.Runner(loop_factory=settings.new_event_loop) as runner:
            runner.run(InferenceServer(settings).serve_forever(_building(to_build, builders) if to_build else None))
    except OSError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # unreadable TLS files
        raise CLIError(str(exc), EXIT_USAGE) from None
    if any(t.is_alive() for t in builders):
        # Training is still running in PyTorch's own threads; finalizing the interpreter under
        # them aborts the process (std::terminate). The build resumes on the next start: every
        # model written so far is whole, and the ones missing are built again.
        logger.info("stopped while building the default models; the next start builds what is missing")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


_EPILOG = """\
per model, in its config.pbtxt (Triton's fields):
  max_batch_size                       largest batch a request or a merged run may have
  dynamic_batching {                   merge concurrent requests into one onnxruntime run
    preferred_batch_size: [8, 32]      run as soon as a batch reaches one of these sizes
    max_queue_delay_microseconds: 3000 wait at most this long for more requests (default 0);
                                       without preferred sizes, only for as many as were
                                       recently waiting at once: a lone client never waits
    default_queue_policy { max_queue_size: 256 }   beyond it: RESOURCE_EXHAUSTED at once
  }
  instance_group { count: 2 }          runs of this model allowed at the same time
  parameters { key: "deepr.warmup_budget_seconds" value { string_value: "10" } }
                                       merged runs take the preferred sizes, else powers of
                                       two and max_batch_size, each warmed at load within this
                                       budget (sizes past it are not used); "deepr.pad_batches"
                                       "false" lets merged runs take any size
  optimization { graph { level: 1 } }  onnxruntime graph optimization (-1 off .. 2 all)
  model_warmup [{ name: "b32" batch_size: 32 inputs { key: "images" value: {
    data_type: TYPE_FP32 dims: [1, 28, 28] zero_data: true } } }]
                                       run at load, before the model is ready (also
                                       random_data, or input_data_file in the model's warmup/)
  deepr export writes dynamic_batching {} (no added delay) for every batched model.

operations:
  http       V2 REST on --http-port (default 8000): /v2/... as KServe and Triton serve it, binary
             tensor data included; the zoo page at http://HOST:HTTP_PORT/
  metrics    http://HOST:METRICS_PORT/metrics, Triton's names (nv_inference_request_success,
             nv_inference_count, nv_inference_exec_count, nv_inference_*_duration_us,
             nv_inference_pending_request_count, nv_gpu_memory_*_bytes) and deepr_batch_size
  logs       `deepr --log-format json serve ...` (or DEEPR_LOG_FORMAT=json): one JSON object
             per line; failed requests at WARNING with request_id, model, status, duration_ms;
             `deepr -v serve` logs every request
  health     grpc.health.v1 for "" and "inference.GRPCInferenceService", GET /v2/health/ready
             and /v2/health/live on the HTTP port; SIGTERM drains
  access     --token-file guards every inference RPC, the REST routes and /metrics;
             --tls-cert/--tls-key serve TLS on every port; shared memory registrations only from loopback
  limits     --max-connections and --connection-idle-seconds (each port: gRPC and HTTP),
             --header-seconds (HTTP request line and headers), --max-inflight (both
             transports; beyond it RESOURCE_EXHAUSTED / 429 at once, logged once per 10 s,
             counted as failures),
             --trim-idle-seconds (free memory back to the system after a burst)
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model repository over gRPC and HTTP/REST (KServe V2)",
        description="Serve a model repository over gRPC and HTTP/REST (KServe V2 / Triton protocol), with "
        "a page of the zoo in the browser on the HTTP port. Every setting "
        f"can also come from an environment variable {ENV_PREFIX}<SETTING> (e.g. {ENV_PREFIX}PORT); flags win.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--repository",
        type=Path,
        help=f"model repository directory (default: {default_repository()}, built with the "
        "default models on first use)",
    )
    p.add_argument(
        "--build-defaults",
        action="store_true",
        help="if the repository does not exist, build the default models into it",
    )
    p.add_argument(
        "--engine",
        choices=["deepr", "triton"],
        default=os.environ.get(f"{ENV_PREFIX}ENGINE", "deepr"),
        help="deepr: deepr's own server (default; the page, auth, TLS, explanations); triton: NVIDIA "
        "Triton's C++ server from the nvidia-pytriton wheel in front of deepr's runtime, no Python per "
        "request (pip install --no-deps nvidia-pytriton==0.7.0; Linux x86-64). Env: DEEPR_ENGINE",
    )
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=integer(0, 65535), help="gRPC port (default 8001; 0 picks a free port)")
    p.add_argument(
        "--http-port",
        type=integer(-1, 65535),
        help="V2 HTTP/REST port, with the zoo page at / (default 8000; -1 off; 0 a free port)",
    )
    p.add_argument("--no-http", action="store_true", help="serve gRPC only (same as --http-port -1)")
    p.add_argument(
        "--metrics-port",
        type=integer(-1, 65535),
        help="Prometheus metrics port, /metrics (default 8002; -1 off; 0 a free port)",
    )
    p.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), help="onnxruntime device (default auto: CUDA when usable)"
    )
    p.add_argument(
        "--workers",
        type=_worker_count,
        help="processes answering the same ports, one server to clients: model control, shared memory, statistics "
        "and readiness span them all; 'auto': one per core on the CPU, one on a GPU (default 1). Give batched "
        "models a queue delay (deepr export --max-queue-delay-us 3000): without one, each of several workers "
        "merges smaller batches than one busy worker would",
    )
    p.add_argument(
        "--worker-timeout",
        type=number(minimum=0),
        help="with --workers: a worker that has not answered its parent for this many seconds is killed and "
        "started again (default 30; 0 never)",
    )
    p.add_argument("--infer-threads", type=integer(1), help="sessions run concurrently (default 4)")
    p.add_argument(
        "--decode-threads",
        type=integer(0),
        help="threads decoding picture files for models exported with --pixels encoded (default 0: one per core)",
    )
    p.add_argument(
        "--max-picture-pixels",
        type=integer(1),
        help="largest picture file (width x height) those models take; larger ones are refused (default 40000000)",
    )
    p.add_argument(
        "--intra-op-threads", type=integer(0), help="onnxruntime threads per session (default 0: onnxruntime decides)"
    )
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="allow TF32 on CUDA: faster, ~1e-3 relative precision (default off: CUDA matches the CPU in float32)",
    )
    p.add_argument(
        "--ort-spinning",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="idle onnxruntime threads spin-wait for the next run (default off: the cores go to request handling)",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        help="event loop (default auto: uvloop when installed, ~20%% more requests/s)",
    )
    p.add_argument("--max-message-bytes", type=integer(1), help="largest gRPC message (default 256 MiB)")
    p.add_argument("--grace-seconds", type=number(minimum=0), help="drain time on SIGTERM/SIGINT (default 10)")
    p.add_argument(
        "--model-control",
        nargs="?",
        const="explicit",
        choices=("explicit", "poll", "none"),
        help="explicit (default): load and unload on request (deepr load/unload, RepositoryModelLoad/Unload; "
        "names never reach outside the repository); poll: that, and watch the repository, loading new or "
        "changed models and unloading removed ones, without failing requests in flight; none: refuse both",
    )
    p.add_argument(
        "--model-control-mode",
        choices=("explicit", "poll", "none"),
        help="Triton's flag, with Triton's meaning: as --model-control, except that explicit loads at startup "
        "only the models --load-model names (none without it)",
    )
    p.add_argument(
        "--load-model",
        action="append",
        metavar="NAME",
        help="with explicit model control: load NAME at startup ('*': every model), repeatable; the others "
        "are listed as not loaded and load on request",
    )
    p.add_argument(
        "--id",
        help="the server name ServerMetadata answers (default deepr; Triton's clients expect triton)",
    )
    p.add_argument(
        "--no-model-control",
        dest="model_control",
        action="store_const",
        const="none",
        help="same as --model-control none",
    )
    p.add_argument(
        "--poll-seconds",
        type=number(above=0),
        help=f"with --model-control poll: how often to look at the repository (default {_POLL_SECONDS:g})",
    )
    p.add_argument(
        "--max-connections",
        type=integer(0),
        help="open client connections at most; more are refused until some close (default 1024; 0 no limit)",
    )
    p.add_argument(
        "--connection-idle-seconds",
        type=number(minimum=0),
        help="close a connection with no call in flight for this long (default 300; 0 never)",
    )
    p.add_argument(
        "--header-seconds",
        type=number(minimum=0),
        help="close an HTTP connection whose request line and headers take longer than this to arrive, and any "
        "connection whose handshake (TLS; gRPC's HTTP/2 preface) does (default 10; 0 never)",
    )
    p.add_argument(
        "--max-inflight",
        type=integer(1),
        help="inference requests handled at once; beyond it RESOURCE_EXHAUSTED at once (default 4096)",
    )
    p.add_argument(
        "--trim-idle-seconds",
        type=number(minimum=0),
        help="after a burst, return free memory to the system once idle this long (default 2; 0 never)",
    )
    p.add_argument(
        "--grpc-option",
        action="append",
        metavar="KEY=VALUE",
        help="extra gRPC core channel argument, e.g. grpc.max_concurrent_streams=256 (repeatable)",
    )
    p.add_argument(
        "--shared-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept tensors in system shared memory regions that clients on this host register "
        "(default on; tensors then skip the socket)",
    )
    p.add_argument(
        "--shared-memory-remote",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept shared memory registrations from any peer (default off: loopback and Unix sockets only)",
    )
    p.add_argument(
        "--shared-memory-group",
        help="also accept shared memory objects of this group (default: only the server's own user's)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="file holding the bearer token every inference RPC must carry "
        "(or DEEPR_TOKEN; clients send it as 'authorization: Bearer <token>'; server health stays open: "
        "grpc.health.v1, ServerLive, ServerReady, /v2/health/*)",
    )
    p.add_argument("--tls-cert", help="server certificate chain (PEM); with --tls-key, serve TLS only")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must be signed by (mutual TLS)")
    p.add_argument(
        "--strict-model-config",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve complete configs only: a folder of 1/model.onnx without config.pbtxt, or a config without "
        "inputs or outputs, is unavailable (default off: completed from the graph, as Triton does)",
    )
    p.add_argument(
        "--default-max-batch-size",
        type=integer(1),
        help="max_batch_size of a completed config whose graph batches (every input and output with a free first "
        "dimension) (default 4, as Triton's)",
    )
    p.add_argument(
        "--model-name",
        help="the name of the one model served from a repository that is that model's files (model.onnx at its top, "
        "as KServe mounts /mnt/models) (default: the folder's name)",
    )
    p.add_argument(
        "--strict-readiness",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ready only when every model is ready (default on)",
    )
    p.set_defaults(run=_serve)
