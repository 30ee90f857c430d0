"""A server's CPU per batch-1 request under a C load generator (h2load, Debian's nghttp2-client),
which costs a twentieth of what it measures where a Python client costs a third.

gRPC goes through ../shared/peers/h2load_grpc.sh (one pre-serialized ModelInfer body; the
answer checked first; the server's own success and failure counts compared after). REST is
`h2load --h1`: 16 connections, each POSTing the V2 JSON body of one request again as soon as
its answer comes; the answer is checked once first, and only 2xx answers are counted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from scripts.benchmarks.peers.load import tree_cpu_seconds, v2_json_body

__all__ = ["h2load_available", "grpc_point", "rest_point", "CONNECTIONS", "STREAMS"]

SHARED = Path(__file__).resolve().parents[4] / "shared" / "peers"
CONNECTIONS, STREAMS = 16, 4
"""gRPC: 16 connections x 4 streams each; REST: 16 connections, one request at a time each."""


def h2load_available() -> str | None:
    """Why h2load points cannot run here, or None when they can."""
    if shutil.which("h2load") is None:
        return "h2load is not installed (apt-get install nghttp2-client)"
    if not (SHARED / "h2load_grpc.sh").is_file():
        return f"{SHARED / 'h2load_grpc.sh'} is missing"
    return None


def grpc_point(port: int, model: str, pid: int, seconds: float) -> dict:
    """Batch-1 ModelInfer over gRPC: requests/s and the server's CPU ms per request."""
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "BENCH_PY": sys.executable, "CLIENTS": str(CONNECTIONS), "STREAMS": str(STREAMS)}
        command = [
            str(SHARED / "h2load_grpc.sh"),
            str(port),
            model,
            f"{folder}/body",
            str(max(1, round(seconds))),
            str(pid),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 120)
    out = done.stdout + done.stderr
    rate = re.search(r": ([\d,]+) req/s \(", out)
    cpu = re.search(r"= ([\d.]+) ms/request", out)
    counts = re.search(r"server ok (\d+) fail (\d+)", out)
    # h2load stops with up to CONNECTIONS x STREAMS calls in flight: the server may count those
    # it was still answering as failed (Triton does, as cancelled); any more is a real failure
    if done.returncode != 0 or rate is None or cpu is None or counts is None:
        raise RuntimeError(f"h2load over gRPC failed (exit {done.returncode}): {out[-600:]}")
    if int(counts.group(2)) > CONNECTIONS * STREAMS or "h2load" not in out:
        raise RuntimeError(f"h2load over gRPC saw the server fail requests: {counts.group(0)}")
    return {
        "requests_per_second": float(rate.group(1).replace(",", "")),
        "server_cpu_ms_per_request": float(cpu.group(1)),
        "failed_at_stop": int(counts.group(2)),
    }


def rest_point(http_url: str, model: str, x: np.ndarray, pid: int, seconds: float, warmup: float = 1.0) -> dict:
    """Batch-1 V2 JSON inference over HTTP/1.1: requests/s and the server's CPU ms per request."""
    url = f"http://{http_url}/v2/models/{model}/infer"
    body = v2_json_body(x)
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # raises on a non-2xx status
            outputs = json.loads(answer.read())["outputs"]
    except (OSError, ValueError, KeyError) as exc:  # HTTPError is an OSError
        raise RuntimeError(f"{url} refused the V2 JSON request: {exc}") from None
    if not outputs or outputs[0]["shape"][0] != x.shape[0]:
        raise RuntimeError(f"{url} answered {outputs!r:.200}")
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(body)
        file.flush()
        h2 = ["h2load", "--h1", "-c", str(CONNECTIONS), "-d", file.name, "-H", "content-type: application/json"]
        subprocess.run([*h2, "-D", str(max(1, round(warmup))), url], capture_output=True, timeout=warmup + 60)
        cpu0, t0 = tree_cpu_seconds(pid), time.perf_counter()
        done = subprocess.run(
            [*h2, "-D", str(max(1, round(seconds))), url], capture_output=True, text=True, timeout=seconds + 60
        )
        cpu1, t1 = tree_cpu_seconds(pid), time.perf_counter()
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", done.stdout)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout)
    if done.returncode != 0 or counts is None or codes is None:
        raise RuntimeError(f"h2load --h1 failed (exit {done.returncode}): {done.stdout[-600:]}{done.stderr[-300:]}")
    ok = int(codes.group(1))
    if ok == 0 or int(counts.group(2)) or int(codes.group(3)) or int(codes.group(4)):
        raise RuntimeError(f"h2load --h1 saw failures: {counts.group(0)}; {codes.group(0)}")
    return {"requests_per_second": ok / (t1 - t0), "server_cpu_ms_per_request": 1e3 * (cpu1 - cpu0) / ok}
