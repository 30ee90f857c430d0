"""Where a loaded server spends its CPU: tritonclient keeps calls in flight while a sampler
watches the server, and each sample is put in one bucket.

    python scripts/benchmarks/profile_server.py [--server deepr] [--model mlp] [--rows 1] [--inflight 32]
        [--seconds 8] [--client threads] [--sampler perf|py-spy] [--top 20]

--sampler perf (Linux perf, `apt install linux-perf`): every thread's native frames, by the
library they run in (the Python interpreter, gRPC's core, onnxruntime, the kernel...);
sampling does not slow the server. --sampler py-spy (`pip install py-spy`): Python frames,
by the deepr module they are in; py-spy cannot tell a thread waiting in C from one working
there, so shares of waiting frames are upper bounds. Each bucket's CPU per request is its
share times the server's CPU over the window divided by the requests answered. Tracing the
server needs root, or kernel.perf_event_paranoid / ptrace_scope set to allow it.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.benchmarks.peers.load import CLIENTS  # noqa: E402
from scripts.benchmarks.peers.servers import FLOORS, MODELS, SERVERS, served, write_models  # noqa: E402

LIBRARIES: list[tuple[str, str]] = [
    # (bucket, regular expression on perf's shared object name)
    ("onnxruntime", r"onnxruntime"),
    ("Python interpreter (deepr's, asyncio's and grpc.aio's Python code)", r"libpython|python3"),
    ("kernel (syscalls, thread wake-ups, socket I/O)", r"kernel|vdso"),
    ("gRPC core and its Cython layer", r"cygrpc|grpc"),
    ("libc (memcpy, malloc)", r"libc\.so|libstdc|ld-linux"),
    ("protobuf (upb)", r"_message|protobuf|upb"),
    ("event loop (uvloop, _asyncio)", r"uvloop|loop\.cpython|_asyncio"),
    ("numpy", r"numpy|_multiarray"),
]

MODULES: list[tuple[str, str]] = [
    # (bucket, regular expression on one py-spy frame); the innermost frame that a bucket
    # claims decides
    ("onnxruntime run", r"onnxruntime"),
    ("statistics and metrics", r"serving/server/(statistics|metrics)\.py|prometheus_client"),
    ("decode / encode tensors", r"serving/protocol/codecs\.py"),
    ("batcher", r"serving/server/batching\.py"),
    ("dataplane", r"serving/server/(dataplane|admission|model|repository)\.py"),
    ("servicer", r"serving/server/grpc/"),
    ("worker threads (waiting or handing off)", r"concurrent/futures|threading\.py"),
    ("event loop and grpc.aio (Python frames; native work inside them)", r"asyncio/|selectors\.py|grpc/"),
]


def first_claim(frames: list[str], buckets: list[tuple[re.Pattern, str]]) -> str:
    """The bucket of a sample: scan from the innermost frame outwards, first claim wins."""
    for frame in reversed(frames):
        for pattern, name in buckets:
            if pattern.search(frame):
                return name
    return "other"


def perf_samples(pid: int, seconds: float, folder: Path, run_load) -> tuple[collections.Counter, object]:
    data = folder / "perf.data"
    record = ["perf", "record", "-F", "499", "-p", str(pid), "-o", str(data), "--", "sleep", str(seconds + 1)]
    recorder = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    window = run_load()
    error = recorder.communicate()[1]
    if not data.exists():
        raise SystemExit(f"perf recorded nothing:\n{error}")
    report = ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio", "-g", "none"]
    text = subprocess.run(report, capture_output=True, text=True, check=True).stdout
    shares: collections.Counter = collections.Counter()
    buckets = [(re.compile(p), name) for name, p in LIBRARIES]
    for line in text.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if match:
            shares[first_claim([match.group(2)], buckets)] += float(match.group(1))
    return shares, window


def py_spy_samples(pid: int, seconds: float, folder: Path, run_load) -> tuple[collections.Counter, object]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = folder / "samples.txt"
    record = [py_spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "250"]
    record += ["--duration", str(int(seconds)), "--format", "raw", "--output", str(raw)]
    recorder = subprocess.Popen(record, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    window = run_load()
    output = recorder.communicate()[0]
    if not raw.exists():
        raise SystemExit(f"py-spy recorded nothing:\n{output}")
    shares: collections.Counter = collections.Counter()
    buckets = [(re.compile(p), name) for name, p in MODULES]
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        shares[first_claim(stack.split(";"), buckets)] += int(count)
    return shares, window


def main(argv: list[str] | None = None) -> int:
    servers = {**SERVERS, **FLOORS}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=list(servers), default="deepr")
    parser.add_argument("--model", choices=list(MODELS), default="mlp")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--client", choices=list(CLIENTS), default="threads")
    parser.add_argument("--sampler", choices=["perf", "py-spy"], default="perf")
    parser.add_argument("--peers-home", type=Path, default=Path.home() / ".cache" / "deepr" / "peers")
    args = parser.parse_args(argv)
    if args.sampler == "perf" and not shutil.which("perf"):
        parser.error("perf is not installed here (Debian: apt install linux-perf); or use --sampler py-spy")
    sample = perf_samples if args.sampler == "perf" else py_spy_samples

    with tempfile.TemporaryDirectory(prefix="deepr-profile-") as tmp:
        folder = Path(tmp)
        models = write_models(folder / "models")
        x = np.random.default_rng(0).random((args.rows, *MODELS[args.model]), dtype=np.float32)
        with served(
            servers[args.server], {args.model: models[args.model]}, folder / "work", args.peers_home, print
        ) as (
            url,
            pid,
        ):

            def run_load():
                return CLIENTS[args.client](url, args.model, x, args.inflight, args.seconds, 1.0, pid)

            shares, window = sample(pid, args.seconds, folder, run_load)
    total = sum(shares.values()) or 1
    per_request = window.server_cpu_ms_per_request
    print(
        f"\n{args.server}, {args.model} {args.rows} x {args.inflight} ({args.client} client, {args.sampler}): "
        f"{window.items_per_second:,.0f} items/s, server CPU {per_request:.3f} ms per request\n"
    )
    print("| where | share | CPU per request (ms) |\n| --- | ---: | ---: |")
    for name, share in shares.most_common():
        print(f"| {name} | {share / total:.0%} | {share / total * per_request:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
