"""What a few hostile bytes cost a `deepr serve`, measured: memory, time to refuse, latency
of small requests beside large ones, connections held. The probes are the ones in
tests/chaos, here with numbers instead of pass/fail.

    python scripts/benchmarks/hostile_probes.py [--checkout DIR] [--out probes.json]

`--checkout` runs the server and `deepr import` from another checkout of deepr (say an older
commit in a git worktree) with this checkout's probes, so that before and after are measured
by the same code. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.chaos.probes import (  # noqa: E402
    ServerProcess,
    add_doubling_model,
    add_pictures_model,
    add_strings_model,
    open_connections,
    trickle,
)
from tests.chaos.test_hostile_keras_files import deepr_import, unwritten_weights_h5, zip_bomb  # noqa: E402
from tests.chaos.test_hostile_requests import (  # noqa: E402
    declared_bytes_request,
    grpc_bytes_request,
    ico_around,
    pictures_request,
    png,
    post,
)

MB = 1 << 20


def probe_a(server: ServerProcess) -> dict:
    before = server.rss_bytes()
    body, headers = declared_bytes_request([100_000_000, 1])
    status, answer, seconds = post(server.http_url, "/v2/models/strings/infer", body, headers)
    return {
        "request_bytes": len(body),
        "status": status,
        "seconds_to_refuse": round(seconds, 3),
        "rss_mb_before": round(before / MB),
        "rss_mb_after": round(server.rss_bytes() / MB),
        "answer": str(answer)[:160],
    }


def probe_b(server: ServerProcess) -> dict:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    trail = [round(server.rss_bytes() / MB)]
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(4):
            try:
                stub.ModelInfer(grpc_bytes_request("strings", [50_000_000, 1]), timeout=30)
            except grpc.RpcError:
                pass
            time.sleep(3)
            trail.append(round(server.rss_bytes() / MB))
    return {"rss_mb_before_and_after_each_of_4": trail}


def probe_f(server: ServerProcess) -> dict:
    flat = io.BytesIO()
    Image.new("L", (2000, 2000), 128).save(flat, format="PNG")
    body, headers = pictures_request([flat.getvalue()] * 300)
    status, _, batch_seconds = post(server.http_url, "/v2/models/pictures/infer", body, headers)
    huge = io.BytesIO()
    Image.new("L", (13000, 13000)).save(huge, format="PNG")
    before = server.rss_bytes()
    body, headers = pictures_request([ico_around(huge.getvalue())])
    ico_status, ico_answer, ico_seconds = post(server.http_url, "/v2/models/pictures/infer", body, headers)
    return {
        "300_pictures_status": status,
        "300_pictures_seconds_to_refuse": round(batch_seconds, 3),
        "ico_status": ico_status,
        "ico_seconds": round(ico_seconds, 3),
        "ico_rss_mb_before": round(before / MB),
        "ico_rss_mb_after": round(server.rss_bytes() / MB),
        "ico_answer": str(ico_answer)[:160],
        **fairness(server),
    }


def fairness(server: ServerProcess, clients: int = 8, seconds: float = 20) -> dict:
    """Small-picture latency while `clients` keep sending 16 pictures of 1400x1400 each."""
    large = pictures_request([png(1400, seed) for seed in range(16)])
    small = pictures_request([png(28)])
    stop = threading.Event()
    large_seconds: list[float] = []

    def keep_sending() -> None:
        while not stop.is_set():
            large_seconds.append(post(server.http_url, "/v2/models/pictures/infer", *large, timeout=600)[2])

    senders = [threading.Thread(target=keep_sending) for _ in range(clients)]
    for sender in senders:
        sender.start()
    time.sleep(2)
    small_seconds = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        small_seconds.append(post(server.http_url, "/v2/models/pictures/infer", *small, timeout=600)[2])
        time.sleep(0.1)
    stop.set()
    for sender in senders:
        sender.join()
    return {
        "fairness_clients": clients,
        "small_requests_answered": len(small_seconds),
        "small_p50_s": round(float(np.median(small_seconds)), 3),
        "small_max_s": round(max(small_seconds), 3),
        "large_request_p50_s": round(float(np.median(large_seconds)), 3),
    }


def probe_g(server: ServerProcess, half_sent: int = 150, slow: int = 100, seconds: float = 21) -> dict:
    port = int(server.http_url.rsplit(":", 1)[1])
    held = open_connections(port, half_sent, b"POST /v2/models/double/infer HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    slowloris = trickle(open_connections(port, slow, b"GET /v2 HTTP/1.1\r\nHost: x\r\n"), seconds, every=3)
    time.sleep(max(0.0, started + seconds - time.monotonic()))  # the half-sent ones are judged at `seconds`
    open_half_sent = sum(1 for c in held if _still_open(c))
    for connection in held + slowloris:
        connection.close()
    return {
        f"half_sent_open_after_{seconds:g}s": f"{open_half_sent}/{half_sent}",
        f"slowloris_open_after_{seconds:g}s": f"{len(slowloris)}/{slow}",
    }


def _still_open(connection: socket.socket) -> bool:
    """Whether the server still holds `connection` (whatever it wrote before closing is read)."""
    connection.setblocking(False)
    try:
        while connection.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def probe_imports(checkout: Path, folder: Path) -> dict:
    files = {
        "C_unwritten_25m.h5": unwritten_weights_h5(folder / "unwritten_25m.h5", 25_000_000),
        "D_bomb_metadata.keras": zip_bomb(folder / "bomb_metadata.keras", "metadata.json"),
    }
    results = {}
    for label, path in files.items():
        home = folder / f"home_{label}"
        code, stderr, seconds, peak = deepr_import(path, home, cwd=checkout)
        written = sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) if home.exists() else 0
        errors = [line for line in stderr.splitlines() if line and not line.startswith("PEAK_RSS_KB")]
        results[label] = {
            "file_bytes": path.stat().st_size,
            "exit": code,
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak / 2**20),
            "bytes_written": written,
            "message": errors[-1][:160] if errors else "",
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the deepr checkout to run (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("hostile_probes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        add_doubling_model(repository, "double")
        add_strings_model(repository, "strings")
        add_pictures_model(repository, "pictures")
        server = ServerProcess(
            repository,
            "--max-connections",
            "20",
            "--connection-idle-seconds",
            "5",
            "--decode-threads",
            "2",
            cwd=args.checkout,
        )
        try:
            results = {"A": probe_a(server), "B": probe_b(server), "F": probe_f(server), "G": probe_g(server)}
            results["alive_after"] = server.alive()
        finally:
            server.stop()
        results.update(probe_imports(args.checkout, Path(tmp)))
    results["checkout"] = str(args.checkout)
    for probe, figures in results.items():
        print(f"{probe}: {json.dumps(figures)}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
