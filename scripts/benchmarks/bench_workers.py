"""Requests per second of `deepr serve --workers N`, driven by h2load (nghttp2's C load
generator, Debian's nghttp2-client), which costs far less CPU than any Python client: on 2
cores a Python client takes a third of what it measures.

    python scripts/benchmarks/bench_workers.py [--workers 1,2] [--seconds 10] [--rest]
        [--max-queue-delay-us 3000] [--against DIR] [--out workers.json]

For each model and batch size, each worker count is served in turn (the cells alternate,
`--rounds` times, so that a drift of the machine falls on both), and h2load sends ModelInfer
over gRPC (a length-prefixed ModelInferRequest, `content-type: application/grpc`) and, with
`--rest`, the same request over HTTP/1.1 REST with binary tensors. Printed and written: req/s,
p50 and p99 latency (from h2load's per-request log), and the server's CPU per request (every
process of it, the parent and its workers), h2load's own CPU per request, and the idle cores
of the machine during the run (whether a worker more had any core to use). Every answer is checked once before the load: a
gRPC error would travel in HTTP 200's trailers, which h2load does not read.

`--against DIR` serves each cell from another checkout of deepr too (say the commit before a
change, in a git worktree), alternating with this one in every round, and adds its rows as
code "against": before and after measured side by side in one run.

`--max-queue-delay-us` sets the models' queue delay (as `deepr export --max-queue-delay-us`
does) for every worker count alike: one busy worker gathers large batches by itself, while
each of several less busy workers would otherwise run one or two requests at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deepr.bench import serve_subprocess  # noqa: E402
from exporters.repository import tune_serving  # noqa: E402
from scripts.benchmarks.peers.load import tree_cpu_seconds  # noqa: E402
from serving.client import InferenceClient  # noqa: E402
from serving.protocol.generated import grpc_predict_v2_pb2 as pb  # noqa: E402

CASES = {"mnist_convnet": [1], "catsdogs_convnet": [32]}
STREAMS = {1: (16, 4), 32: (8, 1)}
"""Batch size -> (connections, requests in flight on each): the workers issue's cells."""
SHAPES = {"mnist_convnet": (1, 28, 28), "catsdogs_convnet": (3, 150, 150)}


def grpc_body(model: str, batch: int) -> bytes:
    """One ModelInfer call's HTTP/2 body: the gRPC frame (no compression, big-endian length)."""
    x = np.random.default_rng(0).random((batch, *SHAPES[model]), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    message = request.SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


def rest_body(model: str, batch: int) -> tuple[bytes, int]:
    x = np.random.default_rng(0).random((batch, *SHAPES[model]), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {
                    "name": "probabilities" if model == "mnist_convnet" else "probability",
                    "parameters": {"binary_data": True},
                }
            ],
        }
    ).encode()
    return header + x.tobytes(), len(header)


@dataclass(frozen=True)
class Served:
    """Where a running `deepr serve` answers, and its process (whose children are the workers)."""

    url: str
    http_url: str
    pid: int

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)


def _run(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"h2load failed: {done.stderr or done.stdout}")
    return done.stdout


def h2load(
    url: str, body: Path, seconds: float, headers: list[str], rest: bool, log: Path, load: tuple[int, int]
) -> dict[str, float]:
    """A 2-second probe sets the request count for about `seconds` of load (h2load's
    per-request log is right only for counted runs, not timed ones), then the counted run."""
    connections, streams = load
    command = ["h2load", "-c", str(connections), "-m", "1" if rest else str(streams), "-d", str(body)]
    for header in headers:
        command += ["-H", header]
    if rest:
        command.append("--h1")
    probe = _run([*command, "-D", "2", "--warm-up-time", "1", url], 120)
    rate = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", probe).group(1))
    count = max(connections * 4, int(rate * seconds))
    log.unlink(missing_ok=True)  # h2load appends to its log
    idle_before, children_before = idle_core_seconds(), _children_cpu_seconds()
    out = _run([*command, "-n", str(count), "--log-file", str(log), url], seconds * 10 + 120)
    h2load_cpu = _children_cpu_seconds() - children_before
    idle = idle_core_seconds() - idle_before
    elapsed = float(re.search(r"finished in ([\d.]+)s", out).group(1))
    succeeded = int(re.search(r"(\d+) succeeded", out).group(1))
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    durations = [int(fields[2]) / 1000 for fields in lines if fields[1] == "200"]
    refused = sum(1 for fields in lines if fields[1] != "200") + (count - succeeded)
    if refused:
        raise SystemExit(f"{refused} of {count} requests were not answered 200: {out[-800:]}")
    return {
        "requests": succeeded,
        "seconds": elapsed,
        "req_per_s": succeeded / elapsed,
        "p50_ms": statistics.median(durations),
        "p99_ms": float(np.percentile(durations, 99)),
        "h2load_cpu_ms_per_request": 1000 * h2load_cpu / succeeded,
        "idle_cores": idle / elapsed,
    }


def idle_core_seconds() -> float:
    """Seconds all cores have spent idle since boot (/proc/stat): whether a second worker
    had a core to use shows in how much of the machine the one-worker run left idle."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load, once it has been waited for
    return usage.ru_utime + usage.ru_stime


def measure(
    server: Served, model: str, batch: int, seconds: float, rest: bool, folder: Path, load: tuple[int, int]
) -> dict[str, float]:
    if rest:
        payload, header_length = rest_body(model, batch)
        url = f"http://{server.http_url}/v2/models/{model}/infer"
        headers = ["content-type: application/octet-stream", f"inference-header-content-length: {header_length}"]
        check = urllib.request.Request(
            url, data=payload, headers=dict(h.split(": ", 1) for h in headers), method="POST"
        )
        with urllib.request.urlopen(check, timeout=30) as answer:  # the body is one the server answers
            assert answer.status == 200 and answer.headers["Inference-Header-Content-Length"]
    else:
        payload = grpc_body(model, batch)
        url = f"http://{server.url}/inference.GRPCInferenceService/ModelInfer"
        headers = ["content-type: application/grpc", "te: trailers"]
    body = folder / "body.bin"
    body.write_bytes(payload)
    probe_cpu = server.cpu_seconds()
    result = h2load(url, body, seconds, headers, rest, folder / "h2load.log", load)
    # the CPU of the counted run: the probe's share is taken from its rate and length
    spent = server.cpu_seconds() - probe_cpu
    probed = 3 * result["req_per_s"]  # the probe's 1 s of warm-up and 2 s of load
    result["server_cpu_ms_per_request"] = 1000 * spent / (result["requests"] + probed)
    return result


def export_models(repository: Path) -> None:
    from exporters import export_model

    for model in CASES:
        if not (repository / model).is_dir():
            export_model(model, repository, max_batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per cell (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each cell is measured, alternating")
    parser.add_argument("--rest", action="store_true", help="also REST with binary tensors (h2load --h1)")
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--server-option", action="append", default=[], help="extra deepr serve flag (repeatable)")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=0,
        help="max_queue_delay_microseconds in each model's dynamic_batching (default 0, as exported)",
    )
    parser.add_argument(
        "--load",
        type=lambda text: tuple(int(n) for n in text.split("x")),
        help="CONNECTIONSxSTREAMS for every cell, e.g. 1x1 for one client waiting for each answer "
        "(default: 16x4 at batch 1, 8x1 at batch 32; REST sends one request at a time per connection)",
    )
    parser.add_argument("--against", type=Path, help="another deepr checkout, measured beside this one")
    parser.add_argument("--out", type=Path, default=Path("workers.json"))
    args = parser.parse_args()
    codes: list[tuple[str, Path | None]] = [("this", None)] + ([("against", args.against)] if args.against else [])
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is not installed: apt-get install nghttp2-client")
    counts = [int(w) for w in args.workers.split(",")]
    models = args.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        repository = folder / "repository"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fresh weights: speed only
            export_models(repository)
        for model in models:  # as `deepr export --max-queue-delay-us` writes it
            tune_serving(repository / model, max_queue_delay_us=args.max_queue_delay_us)
        for transport in ["grpc"] + (["rest"] if args.rest else []):
            for model in models:
                for batch in CASES[model]:
                    for round_ in range(args.rounds):
                        for workers, (code, checkout) in [(w, c) for w in counts for c in codes]:
                            extra = ["--workers", str(workers), "--metrics-port", "-1", *args.server_option]
                            with serve_subprocess(
                                repository, device="auto", extra=extra, http_port=0, cwd=checkout
                            ) as (url, process):
                                with InferenceClient(url) as client:  # answers are right
                                    x = np.zeros((batch, *SHAPES[model]), np.float32)
                                    assert client.infer(model, {"images": x})
                                load = args.load or STREAMS[batch]
                                server = Served(url, process.http_url, process.pid)  # type: ignore[attr-defined]
                                result = measure(server, model, batch, args.seconds, transport == "rest", folder, load)
                            row = {
                                "code": code,
                                "load": "x".join(map(str, load)),
                                "transport": transport,
                                "model": model,
                                "batch": batch,
                                "workers": workers,
                                "round": round_,
                                **result,
                            }
                            rows.append(row)
                            print(
                                f"{code:<7} {transport:<5} {model:<17} batch {batch:>3} workers {workers}: "
                                f"{result['req_per_s']:>8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                                f"p99 {result['p99_ms']:7.2f} ms  server CPU {result['server_cpu_ms_per_request']:.3f} ms/req  "
                                f"h2load CPU {result['h2load_cpu_ms_per_request']:.3f} ms/req  "
                                f"idle {result['idle_cores']:.2f} cores",
                                flush=True,
                            )
    columns = (
        "code",
        "transport",
        "model",
        "batch",
        "workers",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms/req",
        "h2load",
        "idle",
        "vs 1",
    )
    widths = (-7, -9, -17, 5, 7, 9, 7, 8, 10, 7, 5, 6)
    print("\n" + " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(columns, widths)))
    base: dict[tuple, float] = {}
    summary = []
    for key in sorted({(r["transport"], r["model"], r["batch"], r["workers"], r["code"]) for r in rows}):
        cell = [r for r in rows if (r["transport"], r["model"], r["batch"], r["workers"], r["code"]) == key]
        merged = {
            k: float(np.median([r[k] for r in cell]))
            for k in (
                "req_per_s",
                "p50_ms",
                "p99_ms",
                "server_cpu_ms_per_request",
                "h2load_cpu_ms_per_request",
                "idle_cores",
            )
        }
        group = (*key[:3], key[4])  # the ratio is to the first worker count, within one code
        if key[3] == counts[0]:
            base[group] = merged["req_per_s"]
        ratio = merged["req_per_s"] / base[group] if group in base else float("nan")
        summary.append(
            {
                "code": key[4],
                "transport": key[0],
                "model": key[1],
                "batch": key[2],
                "workers": key[3],
                **merged,
                "ratio": ratio,
            }
        )
        print(
            f"{key[4]:<7} {key[0]:<9} {key[1]:<17} {key[2]:>5} {key[3]:>7} {merged['req_per_s']:>9.0f} "
            f"{merged['p50_ms']:>7.2f} "
            f"{merged['p99_ms']:>8.2f} {merged['server_cpu_ms_per_request']:>10.3f} "
            f"{merged['h2load_cpu_ms_per_request']:>7.3f} {merged['idle_cores']:>5.2f} {ratio:>5.2f}x"
        )
    args.out.write_text(
        json.dumps(
            {
                "cores": os.cpu_count(),
                "seconds": args.seconds,
                "max_queue_delay_us": args.max_queue_delay_us,
                "against": str(args.against) if args.against else None,
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
