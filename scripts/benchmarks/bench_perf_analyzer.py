"""deepr measured by perf_analyzer, NVIDIA's own load generator for Triton's protocol (C++,
shipped in the tritonclient wheel; `sh scripts/tools/install_perf_analyzer.sh` once), in each of
its modes: gRPC, gRPC streaming, HTTP, and system shared memory over gRPC and HTTP; and 16
requests in flight from one thread, as unary calls and on one stream (where a stream's requests
must run together to keep up).

    python scripts/benchmarks/bench_perf_analyzer.py [--seconds 4] [--concurrency 8] [--rounds 2]
        [--modes grpc,stream,http,grpc-shm,http-shm,grpc-1x16,stream-1x16] [--against DIR]
        [--out perf_analyzer.json]

Models: Triton's `simple` (two INT32 [16] tensors, no batcher: what a request costs the
server) and mnist_convnet (untrained weights, deepr's export with its dynamic batcher: what
merging buys a stream). Each cell starts its own server, lets perf_analyzer warm it for one
window, then counts inferences/s, p50 and p99 latency (perf_analyzer's client-side figures)
and the server's CPU per inference over the counted windows. `--against DIR` serves each cell
from another checkout too, alternating in every round: before and after in one run.
`--triton ../shared/peers/triton/serve_triton.sh` adds NVIDIA Triton (its C++ front and
dynamic batcher, onnxruntime in a python-backend model) on the same ONNX files, in the same
rounds: its CPU counts the python-backend stubs too.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from deepr.bench import free_port, perf_analyzer, serve_subprocess, server_subprocess  # noqa: E402
from scripts.benchmarks.peers.load import tree_cpu_seconds  # noqa: E402

TRITON_BATCH = {"simple": 8, "mnist_convnet": 64}
"""The models Triton serves beside deepr, with deepr's max_batch_size for each."""

MODES = {
    "grpc": ["-i", "grpc"],
    "stream": ["-i", "grpc", "--streaming"],
    "http": ["-i", "http"],
    "grpc-shm": ["-i", "grpc", "--shared-memory", "system", "--output-shared-memory-size", "4096"],
    "http-shm": ["-i", "http", "--shared-memory", "system", "--output-shared-memory-size", "4096"],
    # 16 in flight from one thread: unary calls, against one stream carrying all 16
    "grpc-1x16": ["-i", "grpc", "--async", "--max-threads", "1", "--concurrency-range", "16"],
    "stream-1x16": ["-i", "grpc", "--streaming", "--max-threads", "1", "--concurrency-range", "16"],
}


def write_repository(root: Path) -> Path:
    from triton_example_repository import write_example_repository

    from exporters import export_model

    examples = write_example_repository(root / "examples")
    repository = root / "repository"
    repository.mkdir()
    shutil.copytree(examples / "simple", repository / "simple")
    export_model("mnist_convnet", repository, max_batch_size=64)
    return repository


@contextlib.contextmanager
def served(code: str, checkout: Path | None, repository: Path, triton: Path | None) -> Iterator[tuple[str, str, int]]:
    """(gRPC address, HTTP address, pid) of deepr (this checkout or `checkout`), or of NVIDIA
    Triton started by `triton` (serve_triton.sh) on the same ONNX files."""
    if code != "triton":
        extra = ["--metrics-port", "-1"]
        with serve_subprocess(repository, device="cpu", http_port=0, extra=extra, cwd=checkout) as (url, process):
            yield url, process.http_url, process.pid
        return
    assert triton is not None
    ports = [free_port() for _ in range(3)]
    models = [f"{m}={repository / m / '1' / 'model.onnx'}:{TRITON_BATCH[m]}" for m in TRITON_BATCH]
    with tempfile.TemporaryDirectory() as folder:
        command = ["bash", str(triton), folder, *map(str, ports), *models]
        url = f"127.0.0.1:{ports[0]}"
        with server_subprocess("triton", command, url, models=list(TRITON_BATCH), timeout=300) as process:
            yield url, f"127.0.0.1:{ports[1]}", process.pid


def run_cell(binary: str, env: dict, url: str, http_url: str, pid: int, model: str, mode: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as report:
        command = [binary, "-m", model, *MODES[mode], "-u", http_url if mode.startswith("http") else url]
        if "--concurrency-range" not in MODES[mode]:
            command += ["--concurrency-range", str(args.concurrency)]
        command += ["--measurement-interval", str(args.seconds * 1000)]
        command += ["--stability-percentage", "100", "--max-trials", "4", "-f", report.name]
        if model == "mnist_convnet":
            command += ["--shape", "images:1,28,28"]
        start = tree_cpu_seconds(pid)
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.seconds * 10 + 120)
        cpu = tree_cpu_seconds(pid) - start
        if done.returncode != 0:
            return {"error": (done.stdout + done.stderr).strip().splitlines()[-1][:300]}
        with open(report.name) as lines:
            row = next(csv.DictReader(lines))
    served = _served_inferences(done.stdout)
    return {
        "infer_per_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "server_cpu_ms_per_infer": 1000 * cpu / served if served else None,
    }


def _served_inferences(output: str) -> int:
    """The server's inference count over every window perf_analyzer ran (warm-up included:
    the CPU is counted over all of them too)."""
    return sum(int(line.split(":")[1]) for line in output.splitlines() if line.strip().startswith("Inference count:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=4, help="length of one measurement window (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests perf_analyzer keeps in flight (default 8)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--models", default="simple,mnist_convnet")
    parser.add_argument("--against", type=Path, help="another deepr checkout, measured alternately")
    parser.add_argument(
        "--triton", type=Path, help="serve_triton.sh of ../shared/peers/triton: NVIDIA Triton measured alternately too"
    )
    parser.add_argument("--out", type=Path, default=Path("perf_analyzer.json"))
    args = parser.parse_args()
    found = perf_analyzer()
    if found is None:
        sys.exit("perf_analyzer cannot start here: run `sh scripts/tools/install_perf_analyzer.sh` first")
    binary, env = found
    codes = [("this", None)] + ([("against", args.against)] if args.against else [])
    codes += [("triton", None)] if args.triton else []
    cells: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        repository = write_repository(Path(folder))
        for model in args.models.split(","):
            for mode in args.modes.split(","):
                for _ in range(args.rounds):
                    for code, checkout in codes:
                        with served(code, checkout, repository, args.triton) as (url, http_url, pid):
                            time.sleep(0.5)
                            result = run_cell(binary, env, url, http_url, pid, model, mode, args)
                        cells.setdefault((model, mode, code), []).append(result)
                        print(f"{model:14} {mode:9} {code:8} {result}", flush=True)
    rows = []
    for (model, mode, code), results in cells.items():
        good = [r for r in results if "error" not in r]
        row = {"model": model, "mode": mode, "code": code, "rounds": len(results)}
        if not good:
            row["error"] = results[0]["error"]
        for key in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_infer"):
            values = [r[key] for r in good if r.get(key) is not None]
            if values:
                row[key] = statistics.median(values)
        rows.append(row)
    print(f"\nperf_analyzer, concurrency {args.concurrency}, {args.seconds} s windows, medians of {args.rounds}")
    print(f"{'model':14} {'mode':9} {'code':8} {'infer/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/inf':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:14} {r['mode']:9} {r['code']:8} error: {r['error']}")
            continue
        cpu = r.get("server_cpu_ms_per_infer")
        print(
            f"{r['model']:14} {r['mode']:9} {r['code']:8} {r['infer_per_s']:9,.0f} {r['p50_ms']:7.2f} "
            f"{r['p99_ms']:7.2f} {cpu if cpu is None else f'{cpu:.3f}':>10}"
        )
    args.out.write_text(json.dumps({"concurrency": args.concurrency, "seconds": args.seconds, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
