"""Run NVIDIA's example clients (clients/, unchanged) against a server, and say which pass.

    python tests/triton_examples/run.py                 # start deepr on the example repository
    python tests/triton_examples/run.py --grpc H:P --http H:P [--json FILE]

A client passes when it exits 0 and prints no "error"/"FAILED" line of its own. The image
clients classify scikit-image's photo of a cat (an embedded picture, no download).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["CLIENTS", "ExampleClient", "example_server", "run_all", "run_client", "run_on_deepr", "photo"]

HERE = Path(__file__).resolve().parent
SERVER_FLAGS = ("--id", "triton", "--no-strict-readiness")
"""The health examples check that the server calls itself triton; the repository's TensorFlow
models never load, and the others serve meanwhile."""
CLIENT_DIR = HERE / "clients"


@dataclass(frozen=True)
class ExampleClient:
    script: str
    transport: str
    """Which URL its -u takes: "grpc" or "http"."""
    arguments: tuple[str, ...] = ()
    needs_photo: bool = False
    needs_cuda: bool = False
    leave_out: tuple[str, ...] = ()
    """Models of the example repository its server goes without (run.py starts one for it)."""


def _image(script: str, transport: str, *extra: str) -> ExampleClient:
    return ExampleClient(script, transport, ("-m", "densenet_onnx", "-s", "INCEPTION", "-c", "3", *extra), True)


CLIENTS = (
    ExampleClient("grpc_explicit_byte_content_client.py", "grpc"),
    ExampleClient("grpc_explicit_int8_content_client.py", "grpc"),
    ExampleClient("grpc_explicit_int_content_client.py", "grpc"),
    _image("grpc_image_client.py", "grpc"),
    _image("grpc_image_client.py", "grpc", "--streaming"),
    _image("image_client.py", "grpc", "-i", "grpc"),
    _image("image_client.py", "http", "-i", "http"),
    _image("image_client.py", "grpc", "-i", "grpc", "--streaming"),
    _image("image_client.py", "http", "-i", "http", "-a"),
    ExampleClient("reuse_infer_objects_client.py", "grpc", ("-i", "grpc")),
    ExampleClient("reuse_infer_objects_client.py", "http", ("-i", "http")),
    ExampleClient("simple_grpc_aio_infer_client.py", "grpc"),
    ExampleClient("simple_grpc_async_infer_client.py", "grpc"),
    ExampleClient("simple_grpc_custom_args_client.py", "grpc"),
    ExampleClient("simple_grpc_health_metadata.py", "grpc"),
    ExampleClient("simple_grpc_infer_client.py", "grpc"),
    ExampleClient("simple_grpc_infer_client.py", "grpc", ("-C", "gzip")),
    ExampleClient("simple_grpc_keepalive_client.py", "grpc"),
    ExampleClient("simple_grpc_shm_client.py", "grpc"),
    ExampleClient("simple_grpc_shm_string_client.py", "grpc"),
    ExampleClient("simple_grpc_string_infer_client.py", "grpc"),
    ExampleClient("simple_http_aio_infer_client.py", "http"),
    ExampleClient("simple_http_async_infer_client.py", "http"),
    ExampleClient("simple_http_health_metadata.py", "http"),
    ExampleClient("simple_http_infer_client.py", "http"),
    ExampleClient("simple_http_infer_client.py", "http", ("--request-compression-algorithm", "gzip")),
    ExampleClient("simple_http_shm_client.py", "http"),
    ExampleClient("simple_http_shm_string_client.py", "http"),
    ExampleClient("simple_http_string_infer_client.py", "http"),
    # last: they unload "simple" when done (each loads it first)
    ExampleClient("simple_grpc_model_control.py", "grpc"),
    # it counts seven models where the gRPC one counts eight: a server of its own, without one
    ExampleClient("simple_http_model_control.py", "http", leave_out=("inception_graphdef",)),
    ExampleClient("simple_grpc_cudashm_client.py", "grpc", needs_cuda=True),
    ExampleClient("simple_http_cudashm_client.py", "http", needs_cuda=True),
)


def photo(folder: Path) -> Path:
    """scikit-image's chelsea the cat as a JPEG file."""
    from PIL import Image
    from skimage import data

    path = folder / "chelsea.jpg"
    if not path.exists():
        Image.fromarray(data.chelsea()).save(path, quality=95)
    return path


def label(client: ExampleClient) -> str:
    return " ".join([client.script, *client.arguments])


def run_client(
    client: ExampleClient, urls: dict[str, str], picture: Path | None, timeout: float = 120
) -> tuple[bool, str]:
    """(passed, its output) for one run of `client` against `urls` ({"grpc": ..., "http": ...})."""
    command = [sys.executable, str(CLIENT_DIR / client.script), "-u", urls[client.transport], *client.arguments]
    if client.needs_photo:
        command.append(str(picture))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return False, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
    output = done.stdout + done.stderr
    failed_line = any(
        w in line for line in output.splitlines() for w in ("error", "FAILED", "failed", "improper", "Traceback")
    )
    # a client that prints PASS when it is done has not passed without it
    promised = 'print("PASS' in (CLIENT_DIR / client.script).read_text()
    return done.returncode == 0 and not failed_line and (not promised or "PASS" in output), output


def _table(results: list[dict]) -> str:
    width = max(len(r["client"]) for r in results)
    lines = [f"{'client':<{width}}  result", f"{'-' * width}  ------"]
    lines += [f"{r['client']:<{width}}  {r['result']}" for r in results]
    return "\n".join(lines)


def run_all(urls: dict[str, str], cuda: bool, clients: Sequence[ExampleClient] = CLIENTS) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        picture = photo(Path(folder))
        for client in clients:
            if client.needs_cuda and not cuda:
                results.append({"client": label(client), "result": "skipped: needs a CUDA device"})
                continue
            passed, output = run_client(client, urls, picture)
            results.append({"client": label(client), "result": "PASS" if passed else "FAIL", "output": output[-2000:]})
    return results


@contextlib.contextmanager
def example_server(folder: Path, leave_out: Sequence[str] = ()) -> Iterator[dict[str, str]]:
    """deepr serving the example repository (less `leave_out`), as NVIDIA's examples expect it;
    yields its {"grpc": ..., "http": ...} addresses."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE.parents[1]))
    from triton_example_repository import write_example_repository

    from deepr.bench import serve_subprocess

    repository = write_example_repository(folder / "repository")
    for name in leave_out:
        shutil.rmtree(repository / name)
    with serve_subprocess(repository, device="cpu", http_port=0, timeout=60, extra=SERVER_FLAGS) as (url, process):
        yield {"grpc": url, "http": process.http_url}


def run_on_deepr(cuda: bool) -> list[dict]:
    """Every client against deepr, each group of them that needs the same repository on a
    server of its own; results in the order of CLIENTS."""
    results: dict[ExampleClient, dict] = {}
    for leave_out in dict.fromkeys(c.leave_out for c in CLIENTS):
        group = [c for c in CLIENTS if c.leave_out == leave_out]
        with tempfile.TemporaryDirectory() as folder, example_server(Path(folder), leave_out) as urls:
            results.update(zip(group, run_all(urls, cuda, group)))
    return [results[c] for c in CLIENTS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc", help="a running server's gRPC address (default: start deepr)")
    parser.add_argument("--http", help="a running server's HTTP address")
    parser.add_argument("--cuda", action="store_true", help="run the CUDA shared memory clients too")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--verbose", action="store_true", help="print each failing client's output")
    args = parser.parse_args()
    started = time.monotonic()
    if args.grpc:
        results = run_all({"grpc": args.grpc, "http": args.http}, args.cuda)
    else:
        results = run_on_deepr(args.cuda)
    print(_table(results))
    passed = sum(r["result"] == "PASS" for r in results)
    failed = sum(r["result"] == "FAIL" for r in results)
    print(f"\n{passed} passed, {failed} failed in {time.monotonic() - started:.0f} s")
    if args.verbose:
        for r in results:
            if r["result"] == "FAIL":
                print(f"\n== {r['client']}\n{r['output']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
