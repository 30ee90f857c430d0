"""Where `deepr serve` spends its CPU under load: py-spy samples the server (native frames
included) while tritonclient keeps calls in flight, and each sample is put in one bucket,
the innermost frame that a bucket claims.

    python scripts/profile_server.py [--model mlp] [--rows 1] [--inflight 32] [--seconds 10]
        [--client threads] [--flamegraph profile.svg] [-- extra deepr serve flags]

Prints each bucket's share of the server's samples and its CPU per request (share x the
server's CPU over the window / requests answered). Needs py-spy (pip install py-spy) and
the right to trace the server (root, or ptrace_scope 0).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.peers.load import CLIENTS  # noqa: E402
from scripts.peers.servers import MODELS, SERVERS, served, write_models  # noqa: E402

BUCKETS: list[tuple[str, str]] = [
    # (bucket, regular expression on one frame); the first bucket whose pattern matches the
    # innermost frame it can claim takes the sample
    ("onnxruntime run", r"onnxruntime|libonnxruntime|onnxruntime_pybind|MlasS?gemm|Mlas"),
    ("protobuf parse / build", r"google/protobuf|upb_|_message\.|protobuf"),
    ("numpy", r"numpy/|multiarray|PyArray"),
    ("statistics and metrics", r"serving/server/(statistics|metrics)\.py|prometheus_client"),
    ("logging", r"logging/__init__\.py|serving/server/logs\.py"),
    (
        "decode / encode tensors",
        r"serving/protocol/codecs\.py|serving/server/grpc/servicer\.py \((_decoder|_encoder|decode|encode)",
    ),
    ("batcher", r"serving/server/batching\.py"),
    ("dataplane", r"serving/server/(dataplane|admission|model)\.py"),
    ("servicer", r"serving/server/grpc/"),
    ("gRPC core (C)", r"grpc_core|grpc_|libgrpc|cygrpc\.cpython|tcp_|chttp2|absl"),
    ("gRPC Python (aio)", r"grpc/_cython|grpc/aio|_cython/_cygrpc"),
    ("thread hand-offs", r"concurrent/futures|threading\.py|call_soon_threadsafe|pthread_cond|futex|sem_(wait|post)"),
    ("asyncio loop", r"asyncio/|selectors\.py|epoll"),
    ("Python interpreter", r"_PyEval|PyObject_|_Py|Py[A-Z]"),
    ("kernel / libc", r"libc\.so|__GI|syscall|\[kernel|memcpy|memmove|malloc|free"),
]


def bucket_of(stack: list[str]) -> str:
    """The bucket of a sample: scan from the innermost frame outwards, first claim wins."""
    for frame in reversed(stack):
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                return name
    return "other"


_COMPILED = [(name, re.compile(pattern)) for name, pattern in BUCKETS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="mlp")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", choices=list(CLIENTS), default="threads")
    parser.add_argument("--server", choices=list(SERVERS), default="deepr")
    parser.add_argument("--peers-home", type=Path, default=Path.home() / ".cache" / "deepr" / "peers")
    parser.add_argument("--top", type=int, default=0, help="also list the N most sampled innermost frames")
    parser.add_argument("--native", action="store_true", help="native frames too (slows the server while sampled)")
    parser.add_argument("--flamegraph", type=Path, help="also write py-spy's flame graph (SVG) here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        parser.error("py-spy is not installed here: pip install py-spy")

    with tempfile.TemporaryDirectory(prefix="deepr-profile-") as tmp:
        models = write_models(Path(tmp) / "models")
        x = np.random.default_rng(0).random((args.rows, *MODELS[args.model]), dtype=np.float32)
        with served(
            SERVERS[args.server], {args.model: models[args.model]}, Path(tmp) / "work", args.peers_home, print
        ) as (
            url,
            pid,
        ):
            raw = Path(tmp) / "samples.txt"
            # --native stops the server at each sample (throughput falls 100-fold at 250 Hz):
            # it is asked for, at a low rate; by default Python frames are read without stopping
            record = [py_spy, "record", "--pid", str(pid)]
            record += ["--native", "--rate", "20"] if args.native else ["--nonblocking", "--rate", "250"]
            record += ["--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw)]
            spy = subprocess.Popen(record, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            window = CLIENTS[args.client](url, args.model, x, args.inflight, args.seconds, 1.0, pid)
            spied = spy.communicate()[0]
            if not raw.exists():
                raise SystemExit(f"py-spy recorded nothing:\n{spied}")
            if args.flamegraph:
                svg = [py_spy, "record", "--pid", str(pid), "--native", "--duration", "3", "--output"]
                subprocess.run([*svg, str(args.flamegraph)], capture_output=True)  # needs load: skipped quietly
        counts: collections.Counter[str] = collections.Counter()
        leaves: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            counts[bucket_of(stack.split(";"))] += int(count)
            leaves[stack.split(";")[-1]] += int(count)
    total = sum(counts.values()) or 1
    per_request = window.server_cpu_ms_per_request
    print(
        f"\n{args.server}, {args.model} {args.rows} x {args.inflight} ({args.client}): "
        f"{window.items_per_second:,.0f} items/s, server CPU {per_request:.3f} ms per request, "
        f"{total} samples\n"
    )
    print("| where | share of samples | CPU per request (ms) |\n| --- | ---: | ---: |")
    for name, count in counts.most_common():
        print(f"| {name} | {count / total:.0%} | {count / total * per_request:.3f} |")
    if args.top:
        print(f"\ninnermost frames, the {args.top} most sampled:")
        for frame, count in leaves.most_common(args.top):
            print(f"  {count / total:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
