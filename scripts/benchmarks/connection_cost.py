"""What a client connection costs `deepr serve`, and what large messages cost, per set of
gRPC channel arguments, side by side in one run.

    python scripts/benchmarks/connection_cost.py [--connections 1000] [--message-mb 16] [--out connection_cost.json]

One server per option set (child processes, all up at once). Each gets `--connections`
raw TCP connections that send only the HTTP/2 preface and an empty SETTINGS frame, as a
client that never makes a call (so no token is ever checked): resident memory is read
before, with them open, and after they close. Then (so that its buffers do not hide the
connections' cost) unary calls carrying a `--message-mb` float32 tensor there and back
go to the servers in turn (median of `--repeats` each). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.chaos.probes import ServerProcess, add_doubling_model, idle_connections  # noqa: E402

OPTION_SETS: dict[str, list[str]] = {
    "grpc defaults (8 KiB first read, up to 4 MiB)": [
        "grpc.experimental.tcp_read_chunk_size=8192",
        "grpc.experimental.tcp_max_read_chunk_size=4194304",
    ],
    "4 MiB reads (deepr before)": [
        "grpc.experimental.tcp_read_chunk_size=4194304",
        "grpc.experimental.tcp_min_read_chunk_size=1048576",
        "grpc.experimental.tcp_max_read_chunk_size=16777216",
    ],
    "64 KiB first read, up to 16 MiB (deepr now)": [],
}
"""Flags over deepr's own channel arguments (the last set is deepr's as they are)."""

ROW_FLOATS = 1 << 18  # 1 MiB rows


def idle_cost(server: ServerProcess, connections: int) -> dict:
    time.sleep(1)
    before = server.rss_bytes()
    with idle_connections(server.port, connections):
        time.sleep(3)
        with_connections = server.rss_bytes()
    time.sleep(3)
    after = server.rss_bytes()
    return {
        "rss_mb_before": before / 2**20,
        "rss_mb_with_connections": with_connections / 2**20,
        "rss_mb_after_close": after / 2**20,
        "kb_per_connection": (with_connections - before) / connections / 1024,
    }


def round_trips_ms(urls: list[str], rows: int, repeats: int) -> list[float]:
    """Median round trip per server, the servers taking turns call by call so that the
    machine's drift falls on all of them alike."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = np.random.default_rng(0).random((rows, ROW_FLOATS), dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="big")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    limit = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channels = [grpc.insecure_channel(url, options=limit) for url in urls]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    for stub in stubs:
        answer = stub.ModelInfer(request)
        if np.frombuffer(answer.raw_output_contents[0], np.float32)[:4].tolist() != (2 * x.reshape(-1)[:4]).tolist():
            raise RuntimeError("wrong answer from the server")
    samples: list[list[float]] = [[] for _ in stubs]
    for _ in range(repeats):
        for stub, times in zip(stubs, samples):
            start = time.perf_counter()
            stub.ModelInfer(request)
            times.append(time.perf_counter() - start)
    for channel in channels:
        channel.close()
    return [statistics.median(times) * 1000 for times in samples]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--message-mb", type=int, default=16, help="size of the tensor sent and returned")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", type=Path, default=Path("connection_cost.json"))
    args = parser.parse_args()
    rows = args.message_mb
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        add_doubling_model(repository, "big", width=ROW_FLOATS, max_batch_size=max(rows, 1))
        servers = {
            name: ServerProcess(
                repository,
                "--max-connections",
                "0",
                "--connection-idle-seconds",
                "0",
                "--no-shared-memory",
                *(f"--grpc-option={option}" for option in options),
            )
            for name, options in OPTION_SETS.items()
        }
        try:
            results = {}
            for name, server in servers.items():
                print(f"idle connections: {name}", file=sys.stderr, flush=True)
                results[name] = {"options": OPTION_SETS[name], **idle_cost(server, args.connections)}
            print("round trips, interleaved", file=sys.stderr, flush=True)
            for name, ms in zip(servers, round_trips_ms([s.url for s in servers.values()], rows, args.repeats)):
                results[name]["round_trip_ms"] = ms
            dead = [name for name, server in servers.items() if not server.alive()]
            if dead:
                raise RuntimeError(f"servers died: {dead}")
        finally:
            for server in servers.values():
                server.stop()
    print(f"\n{args.connections} idle connections; {args.message_mb} MB there and back, median of {args.repeats}\n")
    print("| channel arguments | RSS before | with connections | after close | KB per connection | round trip ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['rss_mb_before']:.0f} MB | {r['rss_mb_with_connections']:.0f} MB | "
            f"{r['rss_mb_after_close']:.0f} MB | {r['kb_per_connection']:.1f} | {r['round_trip_ms']:.0f} |"
        )
    args.out.write_text(
        json.dumps({"connections": args.connections, "message_mb": args.message_mb, "results": results}, indent=2)
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
