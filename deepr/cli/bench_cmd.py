"""deepr bench"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

from serving.server.settings import default_repository

from .arguments import int_list, integer, number
from .errors import EXIT_USAGE, CLIError

logger = logging.getLogger("deepr.bench")


TRANSPORTS = ("grpc", "http", "http-json")


def _transports(text: str) -> tuple[str, ...]:
    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in chosen if t not in TRANSPORTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected transports from {', '.join(TRANSPORTS)}, got {text!r}")
    return chosen


def _cells(text: str) -> list[tuple[int, int]]:
    cells = []
    for cell in text.split(","):
        batch, _, concurrency = cell.partition("x")
        try:
            cells.append((int(batch), int(concurrency)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected cells like 1x32,32x8 (batch x concurrency), got {cell!r}"
            ) from None
        if min(cells[-1]) < 1:
            raise argparse.ArgumentTypeError(f"batch and concurrency must be >= 1, got {cell!r}")
    return cells


def _export_form(served: str) -> tuple[str, str, str]:
    """(zoo model, precision, pixels) of a served name: resnet50_fp16_uint8 -> (resnet50, fp16, uint8)."""
    name, pixels = (served[: -len("_uint8")], "uint8") if served.endswith("_uint8") else (served, "float32")
    name, precision = (name[: -len("_fp16")], "fp16") if name.endswith("_fp16") else (name, "fp32")
    return name, precision, pixels


def _export_missing(repository: Path, models: list[str], staging: Path) -> Path:
    """Models not in `repository` are exported with freshly initialised weights into a
    scratch repository (speed does not depend on the weights); returns the repository to serve."""
    missing = [m for m in models if not (repository / m / "config.pbtxt").is_file()]
    if not missing:
        return repository
    import zoo
    from exporters import UntrainedWeightsWarning, export_model

    unknown = [m for m in missing if _export_form(m)[0] not in zoo.list_models()]
    if unknown:
        raise CLIError(
            f"{', '.join(unknown)}: not in {repository} and not a zoo model, NAME_fp16 or NAME_uint8 "
            "(see `deepr models`)",
            EXIT_USAGE,
        )
    for model in models:
        source = repository / model
        if model in missing:
            logger.info(
                "%s is not in %s: exporting it with freshly initialised weights (speed only)", model, repository
            )
            name, precision, pixels = _export_form(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UntrainedWeightsWarning)
                export_model(name, staging, precision=precision, pixels=pixels)
        else:
            (staging / model).symlink_to(source.resolve(), target_is_directory=True)
    return staging


def _bench(args: argparse.Namespace) -> int:
    try:
        import tritonclient.grpc.aio  # noqa: F401  (the benchmark's client)
    except ImportError:
        raise CLIError(
            "deepr bench drives the server with tritonclient: pip install 'tritonclient[grpc]'", EXIT_USAGE
        ) from None
    from deepr.bench import (
        HEADER,
        batch_profiles,
        copy_with_configs,
        environment,
        run_benchmark,
        with_free_sizes,
        with_instances,
        without_batching,
        write_json,
        write_plot,
    )

    if args.free_batch_sizes and not args.dynamic_batching:
        raise CLIError(
            "--free-batch-sizes compares ways of merging runs: it needs dynamic batching (drop --no-dynamic-batching)",
            EXIT_USAGE,
        )
    try:  # before the run, not after it: its results would be lost
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {args.out}: cannot create its folder: {exc.strerror}", EXIT_USAGE) from None
    models = args.model or ["mnist_convnet"]
    with tempfile.TemporaryDirectory(prefix="deepr-bench-") as scratch:
        repository = _export_missing(args.repository, models, Path(scratch) / "exported")
        if not args.dynamic_batching:
            copy_with_configs(repository, models, Path(scratch) / "unbatched", without_batching)
            repository = Path(scratch) / "unbatched"
        if args.free_batch_sizes or args.instances:  # every form served by one server, measured one after the other
            served = Path(scratch) / "side_by_side"
            served.mkdir()
            for model in models:
                (served / model).symlink_to((repository / model).resolve(), target_is_directory=True)
            variants = []
            if args.free_batch_sizes:
                variants += copy_with_configs(repository, models, served, with_free_sizes, suffix="_free")
            if args.instances:
                variants += copy_with_configs(
                    repository, models, served, with_instances(args.instances), suffix=f"_x{args.instances}"
                )
            models = [*models, *variants]
            repository = served
        server_args = []
        if args.intra_op_threads is not None:
            server_args += ["--intra-op-threads", str(args.intra_op_threads)]
        profiles = batch_profiles(repository, models)
        for model, table in profiles.items():
            print(f"{model}: {table}\n")
        print(HEADER)
        cells = args.cells or [(b, c) for b in args.batch for c in args.concurrency]
        results = run_benchmark(
            repository,
            models,
            cells=cells,
            device=args.device,
            seconds=args.seconds,
            warmup=args.warmup,
            client_processes=args.client_processes,
            server_args=server_args,
            tf32=args.tf32,
            shared_memory=args.shared_memory,
            transports=args.transport,
        )
    settings = {
        "models": models,
        "cells": cells,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "client_processes": args.client_processes,
        "dynamic_batching": args.dynamic_batching,
        "free_batch_sizes": args.free_batch_sizes,
        "instances": args.instances,
        "client": ", ".join(
            sorted({"tritonclient.grpc.aio" if t == "grpc" else "tritonclient.http.aio" for t in args.transport})
        ),
        "transports": list(args.transport),
        "tf32": args.tf32,
        "shared_memory": args.shared_memory,
        "batch_profiles": profiles,
        **environment(args.device, args.tf32),
    }
    write_json(args.out, results, settings)
    write_plot(args.out.with_suffix(".png"), results)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="serving speed: in-process onnxruntime vs deepr's server over gRPC and HTTP (tritonclient), side by side",
        description="Measure items/s and p50/p99 latency of in-process onnxruntime and of a `deepr serve` process "
        "driven by tritonclient, for each model, batch size and concurrency, in one run. Writes JSON and a PNG plot.",
    )
    p.add_argument(
        "--model",
        action="append",
        help="model to measure (repeatable; default mnist_convnet). Zoo models missing "
        "from the repository are exported with freshly initialised weights, NAME_fp16 and NAME_uint8 in those forms",
    )
    p.add_argument(
        "--repository", type=Path, default=default_repository(), help="model repository (default: %(default)s)"
    )
    p.add_argument("--batch", type=int_list, default=[1, 32], help="batch sizes per request (default: 1,32)")
    p.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="requests in flight (default: 1,8,32)")
    p.add_argument("--cells", type=_cells, help="explicit BATCHxCONCURRENCY cells instead of the grid, e.g. 1x64,256x4")
    p.add_argument("--seconds", type=number(above=0), default=5.0, help="measured time per cell (default: %(default)s)")
    p.add_argument(
        "--warmup",
        type=number(minimum=0),
        default=10.0,
        help="longest unmeasured warm-up before each cell; it ends once two 0.5 s windows agree within 5%% "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--client-processes",
        type=integer(1),
        default=1,
        help="processes sharing the concurrency (default: %(default)s)",
    )
    p.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="onnxruntime device (default: auto)"
    )
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA, in-process and on the server alike")
    p.add_argument("--intra-op-threads", type=integer(0), help="onnxruntime threads per session on the server")
    p.add_argument(
        "--dynamic-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve with the models' dynamic batching (--no-dynamic-batching: each request runs alone)",
    )
    p.add_argument(
        "--transport",
        type=_transports,
        default=("grpc",),
        help="comma-separated: grpc, http (binary tensor data), http-json (JSON tensors); each cell is "
        "measured over each, side by side (default: grpc)",
    )
    p.add_argument(
        "--shared-memory",
        action="store_true",
        help="run every gRPC cell a second time with inputs and outputs in system shared memory (mode grpc+shm)",
    )
    p.add_argument(
        "--free-batch-sizes",
        action="store_true",
        help="also serve each model as NAME_free, its merged runs at any size the queue gives instead of "
        "the sizes warmed at load (deepr.pad_batches false), measured in the same run",
    )
    p.add_argument(
        "--instances",
        type=integer(1),
        metavar="N",
        help="also serve each model as NAME_xN with instance_group count N (N sessions, each with cores/N "
        "onnxruntime threads), measured in the same run",
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench_serving.json"), help="JSON results; the plot goes beside it as .png"
    )
    p.set_defaults(run=_bench)
