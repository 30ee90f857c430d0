"""What breaks a server of several workers, and what a silent connection holds, measured: the
probes of tests/chaos/test_workers.py, test_output_shapes.py and
test_handshakes_and_descriptors.py, here with numbers instead of pass/fail.

    python scripts/benchmarks/worker_probes.py [--checkout DIR] [--rounds 40] [--out probes.json]

`--checkout` runs the server from another checkout of deepr (say an older commit in a git
worktree) with this checkout's probes, so that before and after are measured by the same
code. Prints one line of figures per probe and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from exporters.repository import add_to_repository, serving_config  # noqa: E402
from tests.chaos.probes import ServerProcess, add_doubling_model, wait_until  # noqa: E402
from tests.chaos.test_output_shapes import shifted_graph  # noqa: E402


def fresh(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def ask(url: str, call):
    client = fresh(url)
    try:
        return call(client)
    except triton.InferenceServerException as error:
        return error
    finally:
        client.close()


def infer(client, model: str, rows: np.ndarray, region: str | None = None) -> np.ndarray:
    x = triton.InferInput("x", list(rows.shape), "FP32")
    if region is None:
        x.set_data_from_numpy(rows)
    else:
        x.set_shared_memory(region, rows.nbytes)
    return client.infer(model, [x]).as_numpy("y")


def is_ready(url: str) -> bool:
    return ask(url, lambda c: c.is_server_ready()) is True


def worker_pids(server: ServerProcess) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d+ started, pid (\d+)", server.log_text())]


def private_sockets(server: ServerProcess, count: int) -> list[str]:
    folder = re.search(r"their sockets in (\S+)", server.log_text()).group(1)
    return [f"unix:{folder}/worker-{i}.sock" for i in range(count)]


def workers_server(repository: Path, checkout: Path, *flags: str) -> ServerProcess:
    server = ServerProcess(repository, "--workers", "2", *flags, cwd=checkout)
    if not wait_until(lambda: is_ready(server.url), 60):
        raise SystemExit("the server did not become ready:\n" + server.log_text())
    return server


def probe_kill_with_a_region(repository: Path, checkout: Path) -> dict:
    """A: a region registered, then worker 1 killed; requests on fresh connections for 15 s."""
    server = workers_server(repository, checkout)
    region = shared_memory.SharedMemory(create=True, size=16)
    try:
        np.ndarray((4,), np.float32, buffer=region.buf)[:] = 1
        ask(server.url, lambda c: c.register_system_shared_memory("input", "/" + region.name, 16))
        results: list[bool] = []
        killed_at = time.monotonic() + 1
        pid = worker_pids(server)[1]
        while time.monotonic() < killed_at + 15:
            if pid and time.monotonic() >= killed_at:
                os.kill(pid, signal.SIGKILL)
                pid = 0
            answer = ask(server.url, lambda c: infer(c, "double", np.ones((1, 4), np.float32), "input"))
            results.append(isinstance(answer, np.ndarray))
        return {
            "requests": len(results),
            "failed": results.count(False),
            "server_alive_after_15_s": server.alive(),
            "ready_at_end": is_ready(server.url),
        }
    finally:
        region.close()
        region.unlink()
        server.stop()


def probe_load_unload_race(repository: Path, checkout: Path, rounds: int) -> dict:
    """B: a load and an unload of one model at once, each on a connection of its own."""
    server = workers_server(repository, checkout)
    try:
        split = 0
        for _ in range(rounds):
            calls = [lambda c: c.load_model("other"), lambda c: c.unload_model("other")]
            threads = [threading.Thread(target=ask, args=(server.url, call)) for call in calls]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            states = set()
            for address in private_sockets(server, 2):
                with grpc.insecure_channel(address) as channel:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                    states.add(stub.ModelReady(service_pb2.ModelReadyRequest(name="other"), timeout=10).ready)
            split += len(states) > 1
        return {"rounds": rounds, "rounds_split": split}
    finally:
        server.stop()


def probe_parent_killed(repository: Path, checkout: Path) -> dict:
    """C: SIGKILL of the parent; its workers 30 s later, the port, the sockets' folder."""
    server = workers_server(repository, checkout)
    pids = worker_pids(server)
    folder = Path(re.search(r"their sockets in (\S+)", server.log_text()).group(1))
    os.kill(server.proc.pid, signal.SIGKILL)
    started = time.monotonic()
    gone = wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 30)
    seconds = time.monotonic() - started
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", server.port))
            port_free = True
        except OSError:
            port_free = False
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    server.stop()
    return {
        "workers_alive_after_30_s": len(alive),
        "seconds_until_gone": round(seconds, 2) if gone else None,
        "port_free": port_free,
        "socket_folder_left": folder.exists(),
    }


def probe_foreign_rows(root: Path, checkout: Path, rounds: int) -> dict:
    """D: pairs of one-row requests merged into one run of a graph answering 2N-1 rows."""
    repository = root / "shapes"
    config = serving_config("shifted", 8)
    config.dynamic_batching.max_queue_delay_microseconds = 2_000_000
    config.dynamic_batching.preferred_batch_size.append(2)
    add_to_repository(repository, config, shifted_graph(root / "shifted.onnx"))
    server = ServerProcess(repository, cwd=checkout)
    try:
        foreign = failed = own = 0
        for round_ in range(rounds):
            answers: dict[float, object] = {}
            values = (2.0 * round_ + 1, 2.0 * round_ + 2)

            def send(value: float) -> None:
                answers[value] = ask(server.url, lambda c: infer(c, "shifted", np.full((1, 4), value, np.float32)))

            threads = [threading.Thread(target=send, args=(v,)) for v in values]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for value, answer in answers.items():
                if not isinstance(answer, np.ndarray):
                    failed += 1
                elif np.all(answer == value):
                    own += 1
                else:
                    foreign += 1
        return {"answers": 2 * rounds, "foreign_rows": foreign, "own_rows": own, "failed": failed}
    finally:
        server.stop()


def probe_metrics_with_an_idle_connection(repository: Path, checkout: Path, pki: dict[str, Path]) -> dict:
    """E: one TCP connection to the HTTPS metrics port that says nothing, then a scrape."""
    server = ServerProcess(repository, "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), cwd=checkout)
    try:
        with socket.create_connection(("127.0.0.1", server.metrics_port)):
            started = time.monotonic()
            try:
                context = ssl.create_default_context(cafile=pki["ca"])
                url = f"https://127.0.0.1:{server.metrics_port}/metrics"
                status = urllib.request.urlopen(url, timeout=20, context=context).status
            except OSError as exc:
                status = type(exc).__name__
            return {"scrape_status": status, "scrape_seconds": round(time.monotonic() - started, 3)}
    finally:
        server.stop()


def probe_grpc_lockout(repository: Path, checkout: Path) -> dict:
    """G: 60 silent sockets against --max-connections 50, then a gRPC client every 0.5 s."""
    server = ServerProcess(repository, "--max-connections", "50", cwd=checkout)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
    try:
        started = time.monotonic()
        while time.monotonic() - started < 150:
            client = fresh(server.url)
            try:
                if client.is_server_live(client_timeout=0.5):
                    break
            except triton.InferenceServerException:
                pass
            finally:
                client.close()
            time.sleep(0.5)
        return {"silent_connections": 60, "cap": 50, "locked_out_seconds": round(time.monotonic() - started, 1)}
    finally:
        for connection in silent:
            connection.close()
        server.stop()


def _pki(folder: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    ca.cert_pem.write_to_path(files["ca"])
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(files["key"])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the deepr checkout to run (default: this one)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the race probes (default 40)")
    parser.add_argument("--out", type=Path, default=Path("worker_probes.json"))
    args = parser.parse_args()
    results: dict[str, object] = {"checkout": str(args.checkout)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repository = root / "repository"
        add_doubling_model(repository, "double")
        add_doubling_model(repository, "other")
        probes = {
            "A_kill_with_a_region": lambda: probe_kill_with_a_region(repository, args.checkout),
            "B_load_unload_race": lambda: probe_load_unload_race(repository, args.checkout, args.rounds),
            "C_parent_killed": lambda: probe_parent_killed(repository, args.checkout),
            "D_foreign_rows": lambda: probe_foreign_rows(root, args.checkout, args.rounds),
            "E_metrics_idle_connection": lambda: probe_metrics_with_an_idle_connection(
                repository, args.checkout, _pki(root)
            ),
            "G_grpc_lockout": lambda: probe_grpc_lockout(repository, args.checkout),
        }
        for name, probe in probes.items():
            results[name] = probe()
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
