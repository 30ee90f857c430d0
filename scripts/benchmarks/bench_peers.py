"""deepr against the servers its users would pick instead, side by side in one run.

    python scripts/benchmarks/bench_peers.py [--servers deepr,deepr-triton,triton,kserve,mlserver]
        [--clients threads,asyncio] [--models cnn,mlp,mnist_convnet] [--grid 1x8,1x32,32x8,32x32]
        [--seconds 5] [--no-h2load] [--out bench_peers.json]

The same ONNX files (the tutorial's MNIST convnet and dense net written with onnx.helper,
and the convnet as deepr's exporter writes it; random weights) are served in turn by deepr
(this checkout, its defaults, a Triton-layout repository), by deepr on Triton's C++ front
(`--engine triton`), by NVIDIA Triton itself (../shared/peers/triton/serve_triton.sh: its
python backend running onnxruntime), KServe's Python model server and MLServer (each with the
least onnxruntime model class a user would write: scripts/benchmarks/peers/, in its own
virtualenv under --peers-home, made on first use). One server runs at a time, on loopback.
First h2load (a C client) sends batch-1 requests over gRPC and REST for the server's CPU per
request; then each point (model, batch rows x calls in flight, client) loads it for
--warmup seconds and measures --seconds. Prints tables and writes JSON: items/s, client
p50/p99, the server's CPU per request (its processes' CPU over the window / requests
answered), the best deepr's ratio to the best peer, and in-process onnxruntime (one caller,
no server) as the ceiling. Not part of the test command: it installs the peers from PyPI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deepr.bench import environment  # noqa: E402
from scripts.benchmarks.peers.h2load import CONNECTIONS, STREAMS, grpc_point, h2load_available, rest_point  # noqa: E402
from scripts.benchmarks.peers.load import CLIENTS, HTTP_CLIENTS, Window  # noqa: E402
from scripts.benchmarks.peers.servers import FLOORS, MODELS, SERVERS, Server, deepr_with, served, write_models  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def in_process_items_per_second(path: Path, x: np.ndarray, seconds: float) -> float:
    """onnxruntime alone, default session options, one caller running `x` back to back."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input": x}
    session.run(None, feed)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feed)
        runs += 1
    return runs * x.shape[0] / (time.perf_counter() - start)


def grid(text: str) -> list[tuple[int, int]]:
    try:
        points = [tuple(int(n) for n in point.split("x")) for point in text.split(",")]
    except ValueError:
        points = []
    if not points or any(len(p) != 2 or min(p) < 1 for p in points):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWSxINFLIGHT[,...], e.g. 1x8,32x8")
    return points  # type: ignore[return-value]


def names(choices: dict | list) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        picked = text.split(",")
        unknown = [n for n in picked if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {sorted(choices)}")
        return picked

    return parse


def table(rows: list[dict], client: str, servers: list[str]) -> str:
    """Markdown: per model and point, each server's items/s, deepr's ratio to the best peer,
    each server's CPU per request and p50 / p99 latency, and the in-process ceiling."""
    peers = [s for s in servers if s in SERVERS and not s.startswith("deepr")]
    ours = [s for s in servers if s.startswith("deepr")]
    ratio = peers and ours
    head = ["model", "rows x inflight", *servers, *(["best deepr / best peer"] if ratio else []), "in-process"]
    lines = [
        "items/s; then server CPU ms per request; then p50 / p99 ms",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | --- |" + " ---: |" * (len(head) - 2),
    ]
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["client"] == client:
            cells.setdefault((r["model"], r["rows"], r["inflight"]), {})[r["server"]] = r
    for (model, batch, inflight), cell in cells.items():

        def each(fmt) -> list[str]:
            return [fmt(cell[s]) if s in cell else "" for s in servers]

        point = [model, f"{batch} x {inflight}"]
        rate = each(lambda r: f"{r['items_per_second']:,.0f}")
        best = max((cell[p]["items_per_second"] for p in peers if p in cell), default=0)
        ours_best = max((cell[p]["items_per_second"] for p in ours if p in cell), default=0)
        ceiling = f"{next(iter(cell.values()))['in_process_items_per_second']:,.0f}"
        lines.append(
            "| "
            + " | ".join(
                [
                    *point,
                    *rate,
                    *([f"{ours_best / best:.2f}x"] if ratio and best else []),
                    ceiling,
                ]
            )
            + " |"
        )
        cpu = each(lambda r: f"{r['server_cpu_ms_per_request']:.3f} ms")
        lines.append("| " + " | ".join(["", "CPU/request", *cpu, *([""] if ratio else []), ""]) + " |")
        latency = each(lambda r: f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}")
        lines.append("| " + " | ".join(["", "p50 / p99", *latency, *([""] if ratio else []), ""]) + " |")
    return "\n".join(lines)


def h2load_table(rows: list[dict], servers: list[str]) -> str:
    """Markdown: per model and transport, each server's batch-1 requests/s and CPU per request."""
    lines = [
        f"batch 1 under h2load (gRPC: {CONNECTIONS} connections x {STREAMS} streams; REST: {CONNECTIONS} "
        "HTTP/1.1 connections, V2 JSON): requests/s, then server CPU ms per request",
        "",
        "| model | transport | " + " | ".join(servers) + " |",
        "| --- | --- |" + " ---: |" * len(servers),
    ]
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["transport"]), {})[r["server"]] = r
    for (model, transport), cell in cells.items():
        rate = [f"{cell[s]['requests_per_second']:,.0f}" if s in cell else "" for s in servers]
        cpu = [f"{cell[s]['server_cpu_ms_per_request']:.3f} ms" if s in cell else "" for s in servers]
        lines.append("| " + " | ".join([model, transport, *rate]) + " |")
        lines.append("| " + " | ".join(["", "CPU/request", *cpu]) + " |")
    return "\n".join(lines)


def h2load_points(server: str, models: dict, url: str, http_url: str | None, pid: int, seconds: float) -> list[dict]:
    rows = []
    for model in models:
        for transport in ("grpc", "rest"):
            if transport == "rest" and http_url is None:
                continue
            try:
                if transport == "grpc":
                    point = grpc_point(int(url.rsplit(":", 1)[1]), model, pid, seconds)
                else:
                    x = np.random.default_rng(0).random((1, *MODELS[model]), dtype=np.float32)
                    point = rest_point(http_url, model, x, pid, seconds)
            except RuntimeError as exc:
                log(f"{server:8} h2load {transport} {model}: failed: {exc}")
                continue
            rows.append({"server": server, "model": model, "transport": transport, **point})
            log(
                f"{server:8} h2load {transport:4} {model} b1: {point['requests_per_second']:,.0f} req/s, "
                f"{point['server_cpu_ms_per_request']:.3f} ms server CPU/request"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--servers",
        type=names({**SERVERS, **FLOORS}),
        default=list(SERVERS),
        help=f"any of {', '.join({**SERVERS, **FLOORS})} (the grpc-floor ones: what Python gRPC alone costs)",
    )
    parser.add_argument(
        "--clients",
        type=names(CLIENTS),
        default=["threads", "asyncio"],
        help=f"any of {', '.join(CLIENTS)} (default: the gRPC ones)",
    )
    parser.add_argument("--models", type=names(MODELS), default=list(MODELS))
    parser.add_argument("--grid", type=grid, default=grid("1x8,1x32,32x8,32x32"), help="ROWSxINFLIGHT points")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured window")
    parser.add_argument("--peers-home", type=Path, default=Path.home() / ".cache" / "deepr" / "peers")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also serve deepr under NAME with these `deepr serve` flags and VAR=VALUE environment settings, "
        "e.g. 'one-thread=--intra-op-threads 1'",
    )
    parser.add_argument(
        "--h2load",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure batch-1 server CPU per request with h2load over gRPC and REST (default: on)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_peers.json"))
    args = parser.parse_args(argv)

    servers = {name: {**SERVERS, **FLOORS}[name] for name in args.servers}
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        env = [tuple(f.split("=", 1)) for f in flags.split() if re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", f)]
        serve_flags = [f for f in flags.split() if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", f)]
        servers[name] = Server(name, [], deepr_with(*serve_flags), tuple(env))
    args.servers = list(servers)
    rows: list[dict] = []
    h2rows: list[dict] = []
    if args.h2load and (why := h2load_available()):
        log(f"no h2load points: {why}")
        args.h2load = False
    with tempfile.TemporaryDirectory(prefix="deepr-peers-") as tmp:
        models = write_models(Path(tmp) / "models")
        models = {m: models[m] for m in args.models}
        inputs = {
            (m, r): np.random.default_rng(0).random((r, *MODELS[m]), dtype=np.float32)
            for m in models
            for r, _ in args.grid
        }
        ceiling = {
            key: in_process_items_per_second(models[key[0]], x, min(args.seconds, 2)) for key, x in inputs.items()
        }
        for server in args.servers:
            with served(servers[server], models, Path(tmp) / server, args.peers_home, log) as (url, http_url, pid):
                if args.h2load and server not in FLOORS:
                    h2rows += h2load_points(server, models, url, http_url, pid, args.seconds)
                for client in args.clients:
                    address = http_url if client in HTTP_CLIENTS else url
                    if address is None:
                        log(f"{server}: no HTTP endpoint; {client} skipped")
                        continue
                    for model in models:
                        for batch, inflight in args.grid:
                            try:
                                window: Window = CLIENTS[client](
                                    address, model, inputs[model, batch], inflight, args.seconds, args.warmup, pid
                                )
                            except RuntimeError as exc:  # a peer refusing a client's form is a result, not a crash
                                log(f"{server:8} {client:11} {model} {batch}x{inflight}: failed: {exc}")
                                continue
                            rows.append(
                                {
                                    "server": server,
                                    "client": client,
                                    "model": model,
                                    "rows": batch,
                                    "inflight": inflight,
                                    "requests": window.requests,
                                    "items_per_second": window.items_per_second,
                                    "p50_ms": window.latency_ms(0.5),
                                    "p99_ms": window.latency_ms(0.99),
                                    "server_cpu_ms_per_request": window.server_cpu_ms_per_request,
                                    "client_cpu_share": window.client_cpu_seconds / window.seconds,
                                    "in_process_items_per_second": ceiling[model, batch],
                                }
                            )
                            log(
                                f"{server:8} {client:11} {model} {batch}x{inflight}: "
                                f"{window.items_per_second:,.0f} items/s, "
                                f"{window.server_cpu_ms_per_request:.3f} ms server CPU/request"
                            )
    if h2rows:
        print("\n### h2load\n")
        print(h2load_table(h2rows, args.servers))
    for client in args.clients:
        print(f"\n### client: {client}\n")
        print(table(rows, client, args.servers))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"environment": environment("cpu"), "settings": settings, "rows": rows, "h2load": h2rows}
    args.out.write_text(json.dumps(report, indent=1))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
